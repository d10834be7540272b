package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/moby/buildkit/client"
)

// TestReadyWatcherSplit feeds the watcher BuildKit's rawjson progress, in
// pieces that cut lines, and checks the readiness time and its split.
func TestReadyWatcherSplit(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) *time.Time { t := start.Add(time.Duration(ms) * time.Millisecond); return &t }
	statuses := []client.SolveStatus{
		{Vertexes: []*client.Vertex{{Name: "[internal] load metadata for 127.0.0.1:5000/py:opt", Started: at(30)}}},
		{Vertexes: []*client.Vertex{
			{Name: "[internal] load metadata for 127.0.0.1:5000/py:opt", Started: at(30), Completed: at(120)},
			{Name: "[1/2] FROM 127.0.0.1:5000/py:opt@sha256:abc", Started: at(125)},
		}},
		{Vertexes: []*client.Vertex{
			{Name: "[1/2] FROM 127.0.0.1:5000/py:opt@sha256:abc", Started: at(125), Completed: at(150)},
			{Name: `[2/2] RUN ["python3","/srv/ready.py"]`, Started: at(151)},
		}},
		{Logs: []*client.VertexLog{{Data: []byte("loading\n"), Timestamp: *at(600)}}},
		{Logs: []*client.VertexLog{{Data: []byte("still loading\n" + readyLine + "\n"), Timestamp: *at(900)}}},
		// Progress after the readiness line changes nothing.
		{Vertexes: []*client.Vertex{{Name: "[1/2] FROM 127.0.0.1:5000/py:opt@sha256:abc", Completed: at(2000)}}},
	}
	var stream []byte
	for _, s := range statuses {
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		stream = append(append(stream, b...), '\n')
	}
	w := &readyWatcher{}
	for len(stream) > 0 {
		n := min(len(stream), 37)
		w.Write(stream[:n])
		stream = stream[n:]
	}
	if got := w.at.Sub(start); got != 900*time.Millisecond {
		t.Errorf("ready at %v, want 900ms", got)
	}
	resolve, pull, run := w.split(start)
	if resolve != 120*time.Millisecond || pull != 30*time.Millisecond || run != 750*time.Millisecond {
		t.Errorf("split %v, %v, %v; want 120ms, 30ms, 750ms", resolve, pull, run)
	}

	// Without a FROM step it tells nothing.
	w = &readyWatcher{resolved: start.Add(time.Second), at: start.Add(2 * time.Second)}
	if resolve, pull, run := w.split(start); resolve != 0 || pull != 0 || run != 0 {
		t.Errorf("split %v, %v, %v without a FROM step", resolve, pull, run)
	}
}

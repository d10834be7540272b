package report

import (
	"bytes"
	"image/png"
	"strings"
	"testing"
	"time"
)

func TestMedianP95(t *testing.T) {
	for _, tc := range []struct {
		in          []int
		median, p95 int
	}{
		{nil, 0, 0},
		{[]int{7}, 7, 7},
		{[]int{3, 1, 2}, 2, 3},
		{[]int{4, 1, 3, 2}, 2, 4}, // (2+3)/2 in integers
		{[]int{20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, 10, 19},
	} {
		if got := Median(tc.in); got != tc.median {
			t.Errorf("Median(%v) = %d, want %d", tc.in, got, tc.median)
		}
		if got := P95(tc.in); got != tc.p95 {
			t.Errorf("P95(%v) = %d, want %d", tc.in, got, tc.p95)
		}
	}
}

func sampleRows() ([]Row, []Limit) {
	rows := []Row{
		{Image: "py", Form: "legacy", Ready: []time.Duration{8 * time.Second, 9 * time.Second}, Build: []time.Duration{9 * time.Second}, ReadyBytes: []int64{50e6}, Bytes: []int64{50e6}, Requests: []int{6}, ImageBytes: 50e6},
		{Image: "py", Form: "estargz-opt", Ready: []time.Duration{time.Second}, Build: []time.Duration{time.Second}, ReadyBytes: []int64{5e6}, Bytes: []int64{5e6}, Requests: []int{9}, ImageBytes: 55e6,
			Resolve: []time.Duration{100 * time.Millisecond}, Pull: []time.Duration{50 * time.Millisecond}, Run: []time.Duration{850 * time.Millisecond}},
		{Image: "py", Form: "zstdchunked-opt", Err: "boom | bang"},
	}
	return rows, []Limit{{Image: "py", ReadBytes: 4e6, ReadFiles: 100, RoundTrips: 4, Time: 400 * time.Millisecond}}
}

func TestMarkdown(t *testing.T) {
	rows, limits := sampleRows()
	var b bytes.Buffer
	if err := Markdown(&b, rows, limits, "legacy", 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"| py | legacy | 8.50 s | 9.00 s | 8.00 s |",
		"| 8.50× | 2.5× |",
		"failed: boom / bang",
		"| py | 100 | 4.0 MB | 4 | 0.40 s |",
		"| py | estargz-opt | 0.10 s | 0.05 s | 0.85 s | 1.00 s |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "| py | legacy | 0.00 s") {
		t.Errorf("a row without a split has one:\n%s", out)
	}
}

func TestTargets(t *testing.T) {
	rows, limits := sampleRows()
	rows = append(rows, Row{Image: "py", Form: "estargz", Ready: []time.Duration{4 * time.Second}, ReadyBytes: []int64{8e6}})
	var b bytes.Buffer
	if err := Targets(&b, rows, limits, "legacy", "estargz", 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if want := "| py | estargz-opt | 8.50× | 16.00× | 0.25× | 1.25× |"; !strings.Contains(b.String(), want) {
		t.Errorf("targets lack %q:\n%s", want, b.String())
	}
	if strings.Contains(b.String(), "zstdchunked-opt") {
		t.Errorf("a failed row has targets:\n%s", b.String())
	}
}

func TestChart(t *testing.T) {
	rows, limits := sampleRows()
	var b bytes.Buffer
	if err := Chart(&b, "time to ready", rows, limits); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&b)
	if err != nil {
		t.Fatal(err)
	}
	if r := img.Bounds(); r.Dx() < 200 || r.Dy() < 200 {
		t.Errorf("chart is %v", r)
	}
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[float64]float64{0.36: 0.5, 3.9: 5, 5: 5, 11: 20, 0.09: 0.1} {
		if got := niceCeil(in); got != want {
			t.Errorf("niceCeil(%v) = %v, want %v", in, got, want)
		}
	}
}

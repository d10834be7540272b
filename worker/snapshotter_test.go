package worker

import "testing"

func TestStargzConfigPrefetchAsyncSize(t *testing.T) {
	for _, tt := range []struct {
		name  string
		table map[string]any
		want  int64
	}{
		{"no table", nil, defaultPrefetchAsyncSize},
		{"other keys only", map[string]any{"no_background_fetch": true}, defaultPrefetchAsyncSize},
		{"always wait", map[string]any{"prefetch_async_size": 0}, 0},
		{"own threshold", map[string]any{"prefetch_async_size": 4096}, 4096},
	} {
		cfg, err := stargzConfig(tt.table)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if cfg.PrefetchAsyncSize != tt.want {
			t.Errorf("%s: prefetch_async_size %d, want %d", tt.name, cfg.PrefetchAsyncSize, tt.want)
		}
	}
	if _, err := stargzConfig(map[string]any{"prefetch_async_sise": 1}); err == nil {
		t.Error("a misspelt key was accepted")
	}
}

package main

import "testing"

func TestParseBandwidth(t *testing.T) {
	for in, want := range map[string]int64{
		"100Mbit":  12_500_000,
		"100Mbps":  12_500_000,
		"1G":       125_000_000,
		"12.5MB":   12_500_000,
		"800kbit":  100_000,
		"8000":     1000,
		"1Gbit/s":  125_000_000,
		" 100M ":   12_500_000,
		"100 Mbit": 12_500_000,
	} {
		got, err := parseBandwidth(in)
		if err != nil || got != want {
			t.Errorf("parseBandwidth(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1M", "1x", "0"} {
		if _, err := parseBandwidth(in); err == nil {
			t.Errorf("parseBandwidth(%q) succeeded", in)
		}
	}
}

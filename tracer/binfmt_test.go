package tracer

import (
	"strings"
	"testing"
)

func TestParseShebang(t *testing.T) {
	long := "#!/bin/" + strings.Repeat("x", 300)
	for _, tc := range []struct {
		head, want string
		ok         bool
	}{
		{"#!/bin/sh\necho", "/bin/sh", true},
		{"#! /usr/bin/env python3\n", "/usr/bin/env", true},
		{"#!\t/bin/bash -e\n", "/bin/bash", true},
		{"#!/bin/sh", "/bin/sh", true}, // short file, no newline
		{"#!interp\r\n", "interp\r", true},
		{"#!\n", "", false},
		{"#!   \n", "", false},
		{"\x7fELF", "", false},
		{"# !/bin/sh\n", "", false},
		{long[:binprmBufSize], "", false}, // truncated name
		{"#!/bin/sh " + strings.Repeat("a", 300), "/bin/sh", true},
	} {
		head := tc.head
		if len(head) > binprmBufSize {
			head = head[:binprmBufSize]
		}
		got, ok := parseShebang([]byte(head))
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseShebang(%.20q) = %q, %v; want %q, %v", tc.head, got, ok, tc.want, tc.ok)
		}
	}
}

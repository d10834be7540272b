// Package tarname holds the small helpers the converter and the verifier
// share to read layers the same way: entry names as estargz gives them,
// and reads that stop with their context.
package tarname

import (
	"context"
	"io"
	"path"
	"strings"
)

// Clean is the form estargz gives entry names: relative to the root,
// cleaned, no leading or trailing slash.
func Clean(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// Parent is the directory of a cleaned name, "" at the root.
func Parent(name string) string {
	dir := path.Dir(name)
	if dir == "." {
		return ""
	}
	return dir
}

// ContextReader stops a long read when ctx is done.
func ContextReader(ctx context.Context, r io.Reader) io.Reader {
	return &ctxReader{ctx: ctx, r: r}
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

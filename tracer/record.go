package tracer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// Sentinel errors returned (wrapped) by the record reader and writer. Check
// them with errors.Is.
var (
	// ErrMalformedRecord reports a record line that is not a JSON object
	// with a non-empty "path", or that carries an invalid field value.
	ErrMalformedRecord = errors.New("malformed record")
	// ErrPathEscapes reports a path that leaves the image root after
	// cleaning, such as "../etc/passwd" or "a/../../x".
	ErrPathEscapes = errors.New("path escapes the image root")
)

// maxRecordLine bounds one record line. Linux paths are at most 4096 bytes,
// so a line this long is garbage, and the bound keeps a hostile record from
// making the reader buffer without limit.
const maxRecordLine = 1 << 20

// Entry is one file of a record: a file the workload accessed, in
// first-access order. The JSON form is the one containerd's ctr-remote
// recorder writes and nerdctl reads ({"path","manifestDigest","layerIndex"});
// FirstAccessMs and Size are stargazer extensions that those readers ignore.
type Entry struct {
	// Path is cleaned and relative to the image root ("usr/bin/python3").
	Path string `json:"path"`
	// ManifestDigest is the digest of the image manifest whose layers
	// LayerIndex counts, empty when the entry is not attributed.
	ManifestDigest string `json:"manifestDigest,omitempty"`
	// LayerIndex is the index, in the manifest's layer list (0 = base
	// layer), of the topmost layer that provides the file; nil when the
	// entry is not attributed.
	LayerIndex *int `json:"layerIndex,omitempty"`
	// FirstAccessMs is when the workload first opened the file, in
	// milliseconds since the workload started (0 when unknown).
	FirstAccessMs int64 `json:"firstAccessMs,omitempty"`
	// Size is the file's size in bytes when it was opened (0 when unknown).
	Size int64 `json:"size,omitempty"`
}

// CleanPath returns p as a record path: cleaned, relative to the image root,
// without a leading slash. Absolute paths are made relative ("/usr/lib" and
// "/../usr/lib" both give "usr/lib", since ".." stops at "/"); a relative
// path that climbs above the root is rejected with ErrPathEscapes, and a path
// naming the root itself, an empty one or one holding a NUL byte with
// ErrMalformedRecord.
func CleanPath(p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("empty path: %w", ErrMalformedRecord)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("path %q contains a NUL byte: %w", p, ErrMalformedRecord)
	}
	var c string
	if strings.HasPrefix(p, "/") {
		c = strings.TrimPrefix(path.Clean(p), "/")
	} else {
		c = path.Clean(p)
		if c == ".." || strings.HasPrefix(c, "../") {
			return "", fmt.Errorf("path %q: %w", p, ErrPathEscapes)
		}
	}
	if c == "" || c == "." {
		return "", fmt.Errorf("path %q names the image root, not a file: %w", p, ErrMalformedRecord)
	}
	return c, nil
}

// ParseError is the error ReadRecord and Reader return for a bad line. It
// wraps ErrMalformedRecord or ErrPathEscapes.
type ParseError struct {
	// Line is the 1-based line number of the offending line.
	Line int
	// Err is the underlying error.
	Err error
}

func (e *ParseError) Error() string { return fmt.Sprintf("record line %d: %v", e.Line, e.Err) }

// Unwrap returns the underlying error, so errors.Is sees the sentinels.
func (e *ParseError) Unwrap() error { return e.Err }

// Reader reads a record line by line. It accepts ctr-remote's records and
// stargazer's (unknown fields are ignored for forward compatibility), skips
// blank lines, makes absolute paths relative and drops repeated paths
// (keeping the first, which is the first access).
type Reader struct {
	r    *bufio.Reader
	line int
	seen map[string]struct{}
	err  error
}

// NewReader returns a Reader reading from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReader(r), seen: make(map[string]struct{})}
}

// Next returns the next entry, or io.EOF at the end of the record. After an
// error other than io.EOF the Reader keeps returning that error.
func (rd *Reader) Next() (Entry, error) {
	for rd.err == nil {
		line, err := rd.readLine()
		if err != nil {
			rd.err = err
			break
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		e, err := parseLine(line)
		if err != nil {
			rd.err = &ParseError{Line: rd.line, Err: err}
			break
		}
		if _, dup := rd.seen[e.Path]; dup {
			continue
		}
		rd.seen[e.Path] = struct{}{}
		return e, nil
	}
	return Entry{}, rd.err
}

// readLine returns the next line without its terminator, counting lines.
func (rd *Reader) readLine() ([]byte, error) {
	var buf []byte
	for {
		chunk, err := rd.r.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > maxRecordLine {
			rd.line++
			return nil, &ParseError{Line: rd.line, Err: fmt.Errorf("line longer than %d bytes: %w", maxRecordLine, ErrMalformedRecord)}
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF:
			if len(buf) == 0 {
				return nil, io.EOF
			}
			rd.line++
			return buf, nil
		case err != nil:
			return nil, fmt.Errorf("read record: %w", err)
		}
		rd.line++
		return bytes.TrimSuffix(buf[:len(buf)-1], []byte("\r")), nil
	}
}

func parseLine(line []byte) (Entry, error) {
	line = bytes.TrimSpace(line)
	if line[0] != '{' {
		return Entry{}, fmt.Errorf("not a JSON object: %w", ErrMalformedRecord)
	}
	var e Entry
	if err := json.Unmarshal(line, &e); err != nil {
		return Entry{}, fmt.Errorf("%v: %w", err, ErrMalformedRecord)
	}
	if e.Path == "" {
		return Entry{}, fmt.Errorf("missing \"path\": %w", ErrMalformedRecord)
	}
	p, err := CleanPath(e.Path)
	if err != nil {
		return Entry{}, err
	}
	e.Path = p
	if e.LayerIndex != nil && *e.LayerIndex < 0 {
		return Entry{}, fmt.Errorf("negative layerIndex %d: %w", *e.LayerIndex, ErrMalformedRecord)
	}
	if e.FirstAccessMs < 0 || e.Size < 0 {
		return Entry{}, fmt.Errorf("negative firstAccessMs or size: %w", ErrMalformedRecord)
	}
	return e, nil
}

// ReadRecord reads a whole record (see Reader). A bad line fails the whole
// read with a *ParseError naming the line.
func ReadRecord(r io.Reader) ([]Entry, error) {
	rd := NewReader(r)
	var out []Entry
	for {
		e, err := rd.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
}

// Writer writes a record as JSON lines, one entry per line. It cleans paths
// (see CleanPath) and drops entries whose path was already written, so
// feeding it accesses in order yields a first-access-ordered record.
type Writer struct {
	w    io.Writer
	seen map[string]struct{}
}

// NewWriter returns a Writer writing to w. Each entry is one Write call on w;
// wrap w in a bufio.Writer for many entries to a file.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, seen: make(map[string]struct{})}
}

// Write writes e unless its path was written before. It rejects an entry
// whose path CleanPath rejects.
func (w *Writer) Write(e Entry) error {
	p, err := CleanPath(e.Path)
	if err != nil {
		return fmt.Errorf("write record entry: %w", err)
	}
	if _, dup := w.seen[p]; dup {
		return nil
	}
	e.Path = p
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode record entry %q: %w", p, err)
	}
	b = append(b, '\n')
	if _, err := w.w.Write(b); err != nil {
		return fmt.Errorf("write record entry %q: %w", p, err)
	}
	w.seen[p] = struct{}{}
	return nil
}

// WriteAll writes every entry in order.
func (w *Writer) WriteAll(entries []Entry) error {
	for _, e := range entries {
		if err := w.Write(e); err != nil {
			return err
		}
	}
	return nil
}

// Merge combines the records of several workloads into one, keeping
// first-access rank: the i-th entry of every record ranks i, ranks are
// interleaved (all first entries, then all second entries, ...), ties go to
// the earlier record, and a path keeps its best rank only. The result is
// new; the inputs are not modified.
func Merge(records ...[]Entry) []Entry {
	total, longest := 0, 0
	for _, r := range records {
		total += len(r)
		longest = max(longest, len(r))
	}
	out := make([]Entry, 0, total)
	seen := make(map[string]struct{}, total)
	for i := range longest {
		for _, r := range records {
			if i >= len(r) {
				continue
			}
			e := r[i]
			if _, dup := seen[e.Path]; dup {
				continue
			}
			seen[e.Path] = struct{}{}
			if e.LayerIndex != nil {
				l := *e.LayerIndex
				e.LayerIndex = &l
			}
			out = append(out, e)
		}
	}
	return out
}

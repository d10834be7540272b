package buildx

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/moby/buildkit/client"
)

// ErrUnknownOutput is returned for an --output type stargazer cannot export.
var ErrUnknownOutput = errors.New("unknown output type")

// outputTypes are the --output types the CLI accepts, as buildx spells them.
var outputTypes = map[string]bool{
	client.ExporterImage:  true,
	"registry":            true,
	client.ExporterOCI:    true,
	client.ExporterDocker: true,
	client.ExporterLocal:  true,
	client.ExporterTar:    true,
}

// ParseOutput parses one --output value in buildx's syntax: a CSV list of
// key=value pairs with a "type" (image, registry, oci, docker, local, tar)
// and its attributes; a bare path means type=local,dest=path and "-" means
// type=tar,dest=-. Attributes other than "type" and "dest" go to the
// exporter unchanged.
func ParseOutput(s string) (client.ExportEntry, error) {
	var e client.ExportEntry
	if s == "" {
		return e, errors.New("empty --output")
	}
	if !strings.Contains(s, "=") {
		if s == "-" {
			return exportEntry(client.ExporterTar, map[string]string{"dest": "-"})
		}
		return exportEntry(client.ExporterLocal, map[string]string{"dest": s})
	}
	r := csv.NewReader(strings.NewReader(s))
	fields, err := r.Read()
	if err != nil {
		return e, fmt.Errorf("parse --output %q: %w", s, err)
	}
	attrs := map[string]string{}
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return e, fmt.Errorf("parse --output %q: %q is not key=value", s, f)
		}
		attrs[strings.ToLower(strings.TrimSpace(k))] = v
	}
	typ, ok := attrs["type"]
	if !ok {
		return e, fmt.Errorf("parse --output %q: type is required", s)
	}
	delete(attrs, "type")
	return exportEntry(typ, attrs)
}

func exportEntry(typ string, attrs map[string]string) (client.ExportEntry, error) {
	e := client.ExportEntry{Type: typ, Attrs: attrs}
	if !outputTypes[typ] {
		return e, fmt.Errorf("%w %q: want image, registry, oci, docker, local or tar", ErrUnknownOutput, typ)
	}
	if typ == "registry" {
		e.Type = client.ExporterImage
		attrs["push"] = "true"
	}
	dest, hasDest := attrs["dest"]
	delete(attrs, "dest")
	switch e.Type {
	case client.ExporterLocal:
		if !hasDest || dest == "" {
			return e, errors.New("output type=local needs dest=<directory>")
		}
		e.OutputDir = dest
	case client.ExporterOCI, client.ExporterDocker, client.ExporterTar:
		if !hasDest || dest == "" {
			return e, fmt.Errorf("output type=%s needs dest=<file> (or dest=- for standard output)", e.Type)
		}
		e.Output = fileOutput(dest)
	case client.ExporterImage:
		if hasDest {
			return e, errors.New("output type=image takes no dest; use name=<reference>")
		}
	}
	return e, nil
}

// fileOutput opens dest only when the exporter starts writing, so a build
// that fails earlier does not truncate an existing file.
func fileOutput(dest string) func(map[string]string) (io.WriteCloser, error) {
	return func(map[string]string) (io.WriteCloser, error) {
		if dest == "-" {
			return nopCloser{os.Stdout}, nil
		}
		f, err := os.Create(dest)
		if err != nil {
			return nil, fmt.Errorf("open output: %w", err)
		}
		return f, nil
	}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

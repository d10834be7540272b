// Package exporter is stargazer's optimizing exporter: BuildKit's image,
// oci and docker exports, with the attribute optimize=true, write eStargz
// or zstd:chunked layers whose recorded files come first, then the
// landmark, so a lazy runtime prefetches exactly what the workload reads.
//
// The build result is committed as BuildKit commits it (uncompressed new
// layers, base layers as they are), converted (exporter/convert) with the
// record attributed to each layer, and then pushed or written as a tar.
// An eStargz base layer is kept as it is: it stays lazy and shared, is
// never downloaded, and a push mounts it from its repository.
package exporter

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/moby/buildkit/cache"
	"github.com/moby/buildkit/client"
	bkexporter "github.com/moby/buildkit/exporter"
	"github.com/moby/buildkit/exporter/containerimage"
	"github.com/moby/buildkit/exporter/containerimage/exptypes"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/filesync"
	"github.com/moby/buildkit/util/contentutil"
	"github.com/moby/buildkit/util/leaseutil"
	"github.com/moby/buildkit/util/progress"
	"github.com/moby/buildkit/util/push"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/exporter/convert"
	"github.com/stargazer-build/stargazer/frontend"
	"github.com/stargazer-build/stargazer/tracer"
	"github.com/stargazer-build/stargazer/worker"
)

// Exporter attributes stargazer adds to BuildKit's image, oci and docker
// exporters. BuildKit's own attributes keep their meaning.
const (
	// AttrOptimize turns optimization on ("true"). Without it the export
	// is BuildKit's own.
	AttrOptimize = "optimize"
	// AttrRecord is a record (JSON lines, ctr-remote's format or ours) to
	// prioritize by, used when the build result carries none.
	AttrRecord = "optimize-record"
	// AttrReoptimizeBase ("true") converts base layers that are already
	// eStargz or zstd:chunked too, giving up their laziness and sharing.
	AttrReoptimizeBase = "reoptimize-base"
	// AttrTrace ("false") stops the exporter from tracing the image itself
	// when neither the build result nor AttrRecord gives a record.
	AttrTrace = "optimize-trace"
	// AttrTracePeriod is how long that trace runs (default 10s).
	AttrTracePeriod = "optimize-trace-period"
)

// Compressions the optimizing exporter writes (attribute "compression").
const (
	CompressionEStargz     = "estargz"
	CompressionZstdChunked = "zstd:chunked"
)

// Wrapper returns the worker hook that puts the optimizing exporter in
// front of BuildKit's image, oci and docker exporters.
func Wrapper() worker.ExporterWrapper {
	return worker.ExporterWrapperFunc(func(w *worker.Worker, name string, sm *session.Manager, inner bkexporter.Exporter) (bkexporter.Exporter, error) {
		switch name {
		case client.ExporterImage, client.ExporterOCI, client.ExporterDocker:
			if inner == nil {
				return nil, fmt.Errorf("BuildKit has no %s exporter", name)
			}
			return &optimizer{inner: inner, typ: name, w: w, sm: sm}, nil
		}
		return inner, nil
	})
}

type optimizer struct {
	inner bkexporter.Exporter
	typ   string
	w     *worker.Worker
	sm    *session.Manager
}

// settings are the parsed attributes of one optimizing export.
type settings struct {
	format     convert.Format
	level      *int
	reoptimize bool
	oci        bool
	record     []tracer.Entry

	selfTrace   bool
	tracePeriod time.Duration

	name         string
	push         bool
	pushByDigest bool
	insecure     bool
	commit       map[string]string // attributes for BuildKit's commit
}

func (o *optimizer) Resolve(ctx context.Context, id int, attrs map[string]string) (bkexporter.ExporterInstance, error) {
	on, err := boolAttr(attrs, AttrOptimize, false)
	if err != nil {
		return nil, err
	}
	if !on {
		inner := maps.Clone(attrs)
		delete(inner, AttrOptimize)
		return o.inner.Resolve(ctx, id, inner)
	}
	s, err := parseSettings(o.typ, attrs)
	if err != nil {
		return nil, err
	}
	var opts containerimage.ImageCommitOpts
	if _, err := opts.Load(ctx, s.commit); err != nil {
		return nil, err
	}
	opts.SetOCITypesDefault(s.oci)
	return &instance{o: o, id: id, attrs: attrs, s: s, opts: opts}, nil
}

func parseSettings(typ string, attrs map[string]string) (*settings, error) {
	// OCI media types by default, but for a docker tar, which docker load
	// takes with Docker's.
	s := &settings{format: convert.EStargz, oci: typ != client.ExporterDocker, selfTrace: true, commit: map[string]string{}}
	for k, v := range attrs {
		switch k {
		case AttrOptimize:
		case "compression":
			switch v {
			case CompressionEStargz, "gzip", "":
				s.format = convert.EStargz
			case CompressionZstdChunked:
				s.format = convert.ZstdChunked
			default:
				return nil, fmt.Errorf("compression=%s with optimize=true: want %s or %s", v, CompressionEStargz, CompressionZstdChunked)
			}
		case "compression-level":
			l, err := strconv.Atoi(v)
			if err != nil {
				return nil, fmt.Errorf("compression-level=%q: %w", v, err)
			}
			s.level = &l
		case "force-compression", AttrReoptimizeBase:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("%s=%q: want true or false", k, v)
			}
			s.reoptimize = s.reoptimize || b
		case AttrTrace:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("%s=%q: want true or false", k, v)
			}
			s.selfTrace = b
		case AttrTracePeriod:
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("%s=%q: want a positive duration such as 10s", k, v)
			}
			s.tracePeriod = d
		case AttrRecord:
			entries, err := tracer.ReadRecord(strings.NewReader(v))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", AttrRecord, err)
			}
			s.record = entries
		case string(exptypes.OptKeyOCITypes):
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("%s=%q: want true or false", k, v)
			}
			s.oci = b
			s.commit[k] = v
		case string(exptypes.OptKeyName):
			s.name = v
			s.commit[k] = v
		case string(exptypes.OptKeyPush):
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("push=%q: want true or false", v)
			}
			s.push = b
		case string(exptypes.OptKeyPushByDigest):
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("push-by-digest=%q: want true or false", v)
			}
			s.pushByDigest = b
		case string(exptypes.OptKeyInsecure):
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("registry.insecure=%q: want true or false", v)
			}
			s.insecure = b
		case string(exptypes.OptKeyUnpack), string(exptypes.OptKeyStore), string(exptypes.OptKeyNameCanonical),
			string(exptypes.OptKeyDanglingPrefix), string(exptypes.OptKeyDanglingEmptyOnly), "tar", "dest":
			// The OCI worker keeps no image store; the tar exporters take
			// their destination from the client session.
		default:
			s.commit[k] = v
		}
	}
	if s.format == convert.ZstdChunked && !s.oci {
		return nil, fmt.Errorf("compression=zstd:chunked needs oci-mediatypes=true: %w", convert.ErrDockerZstdChunked)
	}
	if s.push && typ != client.ExporterImage {
		return nil, fmt.Errorf("push=true is for the image exporter, not %s", typ)
	}
	if s.push && s.name == "" {
		return nil, errors.New("push=true needs name=<reference>")
	}
	// New layers are committed uncompressed: conversion compresses them
	// once, and base layers keep their blobs (no force-compression).
	s.commit["compression"] = "uncompressed"
	return s, nil
}

func boolAttr(attrs map[string]string, key string, def bool) (bool, error) {
	v, ok := attrs[key]
	if !ok || v == "" {
		return def || ok, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s=%q: want true or false", key, v)
	}
	return b, nil
}

type instance struct {
	o     *optimizer
	id    int
	attrs map[string]string
	s     *settings
	opts  containerimage.ImageCommitOpts
}

func (e *instance) ID() int                    { return e.id }
func (e *instance) Type() string               { return e.o.typ }
func (e *instance) Attrs() map[string]string   { return e.attrs }
func (e *instance) Config() *bkexporter.Config { return bkexporter.NewConfig() }
func (e *instance) Name() string {
	switch e.o.typ {
	case client.ExporterOCI:
		return "exporting optimized image to OCI image format"
	case client.ExporterDocker:
		return "exporting optimized image to docker image format"
	}
	return "exporting optimized image"
}

func (e *instance) Export(ctx context.Context, src *bkexporter.Source, info bkexporter.ExportBuildInfo) (_ map[string]string, _ bkexporter.FinalizeFunc, descref bkexporter.DescriptorReference, retErr error) {
	if e.o.typ == client.ExporterDocker && len(src.Refs) > 0 {
		return nil, nil, nil, errors.New("the docker exporter cannot export a multi-platform image; use type=oci or type=image")
	}
	w := e.o.w
	cs := w.ContentStore()
	ctx, done, err := leaseutil.WithLease(ctx, w.LeaseManager(), leaseutil.MakeTemporary)
	if err != nil {
		return nil, nil, nil, err
	}
	defer func() {
		if descref == nil {
			done(context.WithoutCancel(ctx))
		}
	}()

	iw, err := containerimage.NewImageWriter(containerimage.WriterOpt{
		Snapshotter: w.Snapshotter, ContentStore: cs, Applier: w.Applier, Differ: w.Differ,
	})
	if err != nil {
		return nil, nil, nil, err
	}
	opts := e.opts
	as, _, err := containerimage.ParseAnnotations(src.Metadata)
	if err != nil {
		return nil, nil, nil, err
	}
	opts.Annotations = opts.Annotations.Merge(as)
	committed, _, err := iw.Commit(ctx, src, info.SessionID, info.InlineCache, &opts, info.CompatibilityVersion, client.ExporterImage)
	if err != nil {
		return nil, nil, nil, err
	}

	// Lazy base layers are not in the content store; their refs' remotes
	// provide them, and carry the annotations that let a push mount them
	// from their repository.
	mprovider := contentutil.NewMultiProvider(cs)
	annotations := map[digest.Digest]map[string]string{}
	var providers []content.InfoReaderProvider
	var refs []cache.ImmutableRef
	if src.Ref != nil {
		refs = append(refs, src.Ref)
	}
	for _, r := range src.Refs {
		refs = append(refs, r)
	}
	for _, r := range refs {
		remotes, err := r.GetRemotes(ctx, false, opts.RefCfg, false, session.NewGroup(info.SessionID))
		if err != nil {
			return nil, nil, nil, err
		}
		if len(remotes) == 0 {
			continue
		}
		for _, d := range remotes[0].Descriptors {
			mprovider.Add(d.Digest, remotes[0].Provider)
			addAnnotations(annotations, d)
		}
		providers = append(providers, remotes[0].Provider)
	}

	store := convert.WithFallback(cs, mprovider)
	records, err := e.records(src)
	if err != nil {
		return nil, nil, nil, err
	}
	if len(records) == 0 && e.s.selfTrace {
		if records, err = e.selfTrace(ctx, src, info.SessionID); err != nil {
			return nil, nil, nil, err
		}
	}
	prioritized, err := e.attribute(ctx, store, *committed, records)
	if err != nil {
		return nil, nil, nil, err
	}
	copts := []convert.Option{
		convert.WithFormat(e.s.format),
		convert.WithReoptimizeBase(e.s.reoptimize),
		convert.WithOCIMediaTypes(e.s.oci),
		convert.WithPrioritizedFiles(prioritized.lookup),
	}
	if e.s.level != nil {
		copts = append(copts, convert.WithCompressionLevel(*e.s.level))
	}
	report := progress.OneOff(ctx, fmt.Sprintf("optimizing layers (%s, %d prioritized files)", e.s.format, prioritized.count()))
	desc, rep, err := convert.Image(ctx, store, *committed, copts...)
	if err := report(err); err != nil {
		return nil, nil, nil, fmt.Errorf("optimize: %w", err)
	}
	for _, m := range rep.Manifests {
		for _, l := range m.Layers {
			if len(l.Missing) > 0 {
				progress.OneOff(ctx, fmt.Sprintf("WARNING: layer %d: %d recorded files are not in the layer", l.Index, len(l.Missing)))(nil)
			}
		}
	}
	defer func() {
		if retErr == nil {
			descref = containerimage.NewDescriptorReference(desc, done)
		}
	}()

	resp := map[string]string{exptypes.ExporterImageDigestKey: desc.Digest.String()}
	if dt, err := json.Marshal(desc); err == nil {
		resp[exptypes.ExporterImageDescriptorKey] = base64.StdEncoding.EncodeToString(dt)
	}
	if e.s.name != "" {
		resp[exptypes.ExporterImageNameKey] = e.s.name
	}
	switch e.o.typ {
	case client.ExporterImage:
		if e.s.push {
			if err := e.push(ctx, info.SessionID, mprovider, desc, annotations); err != nil {
				return nil, nil, nil, err
			}
		}
	default:
		if err := e.writeTar(ctx, info.SessionID, mprovider, providers, desc, resp); err != nil {
			return nil, nil, nil, err
		}
	}
	return resp, nil, nil, nil
}

func (e *instance) push(ctx context.Context, sessionID string, provider content.Provider, desc ocispec.Descriptor, annotations map[digest.Digest]map[string]string) error {
	for _, name := range strings.Split(e.s.name, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		report := progress.OneOff(ctx, "pushing "+name)
		err := push.Push(ctx, e.o.sm, sessionID, provider, e.o.w.ContentStore(), desc.Digest, name,
			e.s.insecure, e.o.w.RegistryHosts, e.s.pushByDigest, annotations)
		if err := report(err); err != nil {
			return fmt.Errorf("push %s: %w", name, err)
		}
	}
	return nil
}

func (e *instance) writeTar(ctx context.Context, sessionID string, mprovider *contentutil.MultiProvider, providers []content.InfoReaderProvider, desc ocispec.Descriptor, resp map[string]string) error {
	// A tar holds every blob, so lazy base layers are fetched now.
	for _, p := range providers {
		if u, ok := p.(cache.Unlazier); ok {
			if err := u.Unlazy(ctx); err != nil {
				return err
			}
		}
	}
	names, err := normalizedNames(e.s.name)
	if err != nil {
		return err
	}
	opts := []archive.ExportOpt{archive.WithManifest(desc, names...)}
	if e.o.typ == client.ExporterOCI {
		opts = append(opts, archive.WithAllPlatforms(), archive.WithSkipDockerManifest())
	}
	caller, err := e.o.sm.Get(ctx, sessionID, false)
	if err != nil {
		return err
	}
	w, err := filesync.CopyFileWriter(ctx, resp, e.id, caller)
	if err != nil {
		return err
	}
	report := progress.OneOff(ctx, "sending tarball")
	if err := archive.Export(ctx, mprovider, w, opts...); err != nil {
		w.Close()
		return report(err)
	}
	return report(w.Close())
}

func normalizedNames(name string) ([]string, error) {
	if name == "" {
		return nil, nil
	}
	var out []string
	for _, n := range strings.Split(name, ",") {
		parsed, err := reference.ParseNormalizedNamed(strings.TrimSpace(n))
		if err != nil {
			return nil, fmt.Errorf("name %q: %w", n, err)
		}
		out = append(out, reference.TagNameOnly(parsed).String())
	}
	return out, nil
}

func addAnnotations(m map[digest.Digest]map[string]string, d ocispec.Descriptor) {
	if len(d.Annotations) == 0 {
		return
	}
	a := m[d.Digest]
	if a == nil {
		a = map[string]string{}
		m[d.Digest] = a
	}
	maps.Copy(a, d.Annotations)
}

// records returns the record of each platform (by platforms.Format), or
// under "" the one record that applies to all: the build result's first,
// then the one given as an attribute.
func (e *instance) records(src *bkexporter.Source) (map[string][]tracer.Entry, error) {
	out := map[string][]tracer.Entry{}
	for k, v := range src.Metadata {
		if k != frontend.RecordKey && !strings.HasPrefix(k, frontend.RecordKey+"/") {
			continue
		}
		entries, err := tracer.ReadRecord(strings.NewReader(string(v)))
		if err != nil {
			return nil, fmt.Errorf("record of the build result: %w", err)
		}
		id := strings.TrimPrefix(strings.TrimPrefix(k, frontend.RecordKey), "/")
		if id != "" {
			p, err := platforms.Parse(id)
			if err != nil {
				return nil, fmt.Errorf("record key %s: %w", k, err)
			}
			id = platforms.FormatAll(platforms.Normalize(p))
		}
		out[id] = entries
	}
	if len(out) == 0 && e.s.record != nil {
		out[""] = e.s.record
	}
	return out, nil
}

// prioritizedLists are the per-layer file lists of each platform.
type prioritizedLists struct {
	mu      sync.Mutex
	byPlat  map[string]map[int][]string
	entries int
}

func (p *prioritizedLists) lookup(platform ocispec.Platform, layer int) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.byPlat[platforms.FormatAll(platforms.Normalize(platform))]; ok {
		return l[layer]
	}
	if len(p.byPlat) == 1 {
		for _, l := range p.byPlat {
			return l[layer]
		}
	}
	return nil
}

func (p *prioritizedLists) count() int { return p.entries }

// attribute splits each platform's record into per-layer lists of the
// committed image, each path in the topmost layer that provides it.
func (e *instance) attribute(ctx context.Context, store content.Store, desc ocispec.Descriptor, records map[string][]tracer.Entry) (*prioritizedLists, error) {
	out := &prioritizedLists{byPlat: map[string]map[int][]string{}}
	if len(records) == 0 {
		progress.OneOff(ctx, "WARNING: no trace record: layers are converted without prioritized files")(nil)
		return out, nil
	}
	manifests, err := platformManifests(ctx, store, desc)
	if err != nil {
		return nil, err
	}
	for plat, m := range manifests {
		entries, ok := records[plat]
		if !ok {
			entries, ok = records[""]
		}
		if !ok && len(records) == 1 && len(manifests) == 1 {
			for _, v := range records {
				entries = v
			}
		}
		if len(entries) == 0 {
			continue
		}
		// A base layer kept as it is gets no prioritized files, and
		// reading it through BuildKit's lazy provider would fetch it
		// whole: it is indexed as empty.
		kept := func(_ int, l ocispec.Descriptor) bool { return !e.s.reoptimize && tracer.HasTOC(l) }
		lists, missing, err := tracer.AttributeImage(ctx, store, m.manifest, m.desc.Digest, entries, kept)
		if err != nil {
			return nil, err
		}
		if len(missing) > 0 {
			progress.OneOff(ctx, fmt.Sprintf("WARNING: %s: %d recorded paths are not files of the converted layers (in eStargz base layers kept as they are, or not in the image; e.g. %s)", plat, len(missing), missing[0]))(nil)
		}
		for _, l := range lists {
			out.entries += len(l)
		}
		out.byPlat[plat] = lists
	}
	return out, nil
}

type platformManifest struct {
	desc     ocispec.Descriptor
	manifest ocispec.Manifest
}

// platformManifests maps the image manifests below desc by platform,
// skipping attestation manifests.
func platformManifests(ctx context.Context, p content.Provider, desc ocispec.Descriptor) (map[string]platformManifest, error) {
	out := map[string]platformManifest{}
	var walk func(d ocispec.Descriptor, plat *ocispec.Platform) error
	walk = func(d ocispec.Descriptor, plat *ocispec.Platform) error {
		b, err := content.ReadBlob(ctx, p, d)
		if err != nil {
			return fmt.Errorf("read %s: %w", d.Digest, err)
		}
		switch d.MediaType {
		case ocispec.MediaTypeImageIndex, "application/vnd.docker.distribution.manifest.list.v2+json":
			var idx ocispec.Index
			if err := json.Unmarshal(b, &idx); err != nil {
				return err
			}
			for _, m := range idx.Manifests {
				if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
					continue
				}
				if err := walk(m, m.Platform); err != nil {
					return err
				}
			}
			return nil
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		if plat == nil {
			cb, err := content.ReadBlob(ctx, p, m.Config)
			if err != nil {
				return err
			}
			var img ocispec.Image
			if err := json.Unmarshal(cb, &img); err != nil {
				return err
			}
			plat = &img.Platform
		}
		out[platforms.FormatAll(platforms.Normalize(*plat))] = platformManifest{desc: d, manifest: m}
		return nil
	}
	return out, walk(desc, nil)
}

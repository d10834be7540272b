package exporter_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"

	"github.com/stargazer-build/stargazer/buildx"
	"github.com/stargazer-build/stargazer/testutil"
)

// benchRootfsEnv names a root filesystem (e.g. made by
// `debootstrap --variant=minbase bookworm DIR`) for the "debian" image of
// BenchmarkExport; `make bench-images` makes one at the default path.
const benchRootfsEnv = "STARGAZER_BENCH_ROOTFS"

const defaultBenchRootfs = "/var/cache/stargazer-bench/rootfs"

// BenchmarkExport compares, on the same images in one run, BuildKit's own
// eStargz export (compression=estargz,force-compression=true), stargazer's
// optimized eStargz and zstd:chunked exports of every layer, and the
// estargz library at ctr-remote's defaults (standard library gzip, level
// 9) converting the same layers in-process. Each export runs on a fresh
// daemon whose base image is already pulled; it reports the uncompressed
// image size per second and the output size.
//
//	go test -bench Export -run '^$' -benchtime 3x ./exporter/
func BenchmarkExport(b *testing.B) {
	testutil.RequireIntegration(b)
	images := map[string]testutil.FixtureSpec{"large": testutil.LargeSpec(b, testutil.Gzip, testutil.DefaultLargeSize)}
	rootfs := os.Getenv(benchRootfsEnv)
	if rootfs == "" {
		rootfs = defaultBenchRootfs
	}
	if st, err := os.Stat(filepath.Join(rootfs, "usr")); err == nil && st.IsDir() {
		images["debian"] = testutil.FixtureSpec{Layers: []testutil.Layer{testutil.DirLayer(rootfs)}, Compression: testutil.Gzip}
	} else {
		b.Logf("no debian image: %s has no root filesystem (make bench-images, or set %s)", rootfs, benchRootfsEnv)
	}
	for _, name := range []string{"large", "debian"} {
		spec, ok := images[name]
		if !ok {
			continue
		}
		img := testutil.BuildImage(b, spec)
		var uncompressed int64
		for _, l := range img.Layers {
			uncompressed += layerTarSize(b, img.Blob(l.Digest))
		}
		b.Run(name+"/ctr-remote-defaults", func(b *testing.B) {
			var out int64
			for i := 0; i < b.N; i++ {
				out = 0
				for _, l := range img.Layers {
					out += ctrRemoteDefaults(b, img.Blob(l.Digest))
				}
			}
			report(b, uncompressed, out)
		})
		for _, m := range []struct{ name, output string }{
			{"buildkit-estargz", "compression=estargz,force-compression=true,oci-mediatypes=true"},
			{"stargazer-estargz", "optimize=true,force-compression=true"},
			{"stargazer-zstdchunked", "optimize=true,compression=zstd:chunked,force-compression=true"},
		} {
			b.Run(name+"/"+m.name, func(b *testing.B) { benchExport(b, img, uncompressed, m.output) })
		}
	}
}

func benchExport(b *testing.B, img testutil.Image, uncompressed int64, attrs string) {
	reg := testutil.NewRegistry(b)
	img = img.PushTo(b, reg.Ref("bench:gzip"))
	ctxDir := testutil.BuildContext(b, map[string]string{"Dockerfile": "FROM " + img.Ref + "\n"})
	var out int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		d := testutil.StartDaemon(b, testutil.WithSnapshotter("overlayfs"), testutil.WithPlainHTTPRegistry(reg.Host()))
		run := func(outputs ...string) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			if _, err := buildx.Build(ctx, buildx.BuildOptions{ContextDir: ctxDir, Outputs: outputs, Progress: "quiet",
				Daemon: buildx.DaemonOptions{Addr: d.Addr}}); err != nil {
				b.Fatal(err)
			}
		}
		run() // pull and unpack, untimed
		dest := filepath.Join(b.TempDir(), "out.tar")
		b.StartTimer()
		run("type=oci,dest=" + dest + "," + attrs)
		b.StopTimer()
		st, err := os.Stat(dest)
		if err != nil {
			b.Fatal(err)
		}
		out = st.Size()
		if err := d.Stop(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	report(b, uncompressed, out)
}

func report(b *testing.B, uncompressed, out int64) {
	sec := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(uncompressed)/(1<<20)/sec, "MiB/s")
	b.ReportMetric(float64(out)/(1<<20), "out-MiB")
}

// ctrRemoteDefaults converts one gzip layer as `ctr-remote image optimize`
// does by default and returns the output size.
func ctrRemoteDefaults(b *testing.B, gz []byte) int64 {
	tarData := gunzip(b, gz)
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarData), 0, int64(len(tarData))),
		estargz.WithCompressionLevel(gzip.BestCompression))
	if err != nil {
		b.Fatal(err)
	}
	defer blob.Close()
	n, err := io.Copy(io.Discard, blob)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

func gunzip(b *testing.B, gz []byte) []byte {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		b.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		b.Fatal(err)
	}
	return data
}

func layerTarSize(b *testing.B, gz []byte) int64 { return int64(len(gunzip(b, gz))) }

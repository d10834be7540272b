package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/stargazer-build/stargazer/buildx"
	"github.com/stargazer-build/stargazer/testutil"
)

// BenchmarkColdBuild measures a cold `FROM large + RUN cat small-file`
// build on a fresh daemon, the large fixture pulled whole (gzip on
// overlayfs) against lazily (eStargz on stargz), over loopback and over an
// emulated 100 Mbit/s link with 20 ms per request. It reports the registry
// bytes and requests per build beside the time.
//
//	go test -bench ColdBuild -run '^$' -benchtime 3x ./worker/
func BenchmarkColdBuild(b *testing.B) {
	testutil.RequireIntegration(b)
	type link struct {
		name string
		opts []testutil.RegistryOption
	}
	links := []link{
		{"loopback", nil},
		{"100Mbit-20ms", []testutil.RegistryOption{testutil.WithBandwidth(100e6 / 8), testutil.WithLatency(20 * time.Millisecond)}},
	}
	for _, l := range links {
		for _, bc := range []struct {
			name        string
			compression testutil.Compression
			snapshotter string
		}{
			{"gzip+overlayfs", testutil.Gzip, "overlayfs"},
			{"estargz+stargz", testutil.EStargz, "stargz"},
		} {
			b.Run(l.name+"/"+bc.name, func(b *testing.B) { benchColdBuild(b, l.opts, bc.compression, bc.snapshotter) })
		}
	}
}

func benchColdBuild(b *testing.B, regOpts []testutil.RegistryOption, compression testutil.Compression, snapshotter string) {
	reg := testutil.NewRegistry(b, regOpts...)
	img := testutil.PushLarge(b, reg, compression)
	ctxDir := testutil.BuildContext(b, map[string]string{
		"Dockerfile": "FROM " + img.Ref + " AS run\nRUN mkdir /out && cat /data/small.txt > /out/small.txt\nFROM scratch\nCOPY --from=run /out/ /\n",
	})
	var bytes, requests int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		d := testutil.StartDaemon(b, testutil.WithSnapshotter(snapshotter), testutil.WithPlainHTTPRegistry(reg.Host()))
		reg.Reset()
		out := b.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		b.StartTimer()
		_, err := buildx.Build(ctx, buildx.BuildOptions{
			ContextDir: ctxDir,
			Outputs:    []string{"type=local,dest=" + out},
			Progress:   "quiet",
			Daemon:     buildx.DaemonOptions{Addr: d.Addr},
		})
		b.StopTimer()
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		st := reg.Totals()
		bytes += st.BlobBytes
		requests += int64(st.BlobGets)
		if err := d.Stop(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(bytes)/float64(b.N), "registry-bytes/op")
	b.ReportMetric(float64(requests)/float64(b.N), "blob-requests/op")
}

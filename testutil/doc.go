// Package testutil is the integration-test harness shared by stargazer's
// packages: a real registry that counts what it serves, fixture images
// built offline, and checks that skip tests whose requirements are missing.
//
// # Registry
//
// NewRegistry serves a distribution v3 registry on 127.0.0.1 over plain
// HTTP for one test. In front of it a counting front records, per blob,
// GETs, Range GETs, the ranges asked for and the body bytes served, plus
// totals and a log of every request (BlobStats, Totals, Requests; Reset
// clears them). Faults model bad networks: WithLatency, WithBandwidth, and
// FaultFuncs given to WithFault or (*Registry).SetFaults, such as
// FailNthBlobGet, TruncateBlobGets and DropAll. UnreachableHost gives an
// address whose connections are refused. The registry's own log is
// discarded, or sent to the test log with -v (warnings and errors only).
//
// A typical laziness test pushes a fixture, resets the counters, lets the
// code under test pull, and compares BlobStats with the layer's size:
//
//	reg := testutil.NewRegistry(t)
//	img := testutil.PushLarge(t, reg, testutil.EStargz)
//	reg.Reset()
//	// ... run something that reads /data/small.txt from img.Ref ...
//	if st := reg.BlobStats(img.Layers[2].Digest); st.Bytes > img.Layers[2].Size/10 {
//		t.Errorf("fetched %d of %d bytes", st.Bytes, img.Layers[2].Size)
//	}
//
// # Fixtures
//
// Images are built from the host's static busybox (Debian's busybox-static,
// or $STARGAZER_BUSYBOX), deterministically, with every entry stamped
// FixtureTime. Compressed layers are cached for the test binary, so many
// tests can push the same 32 MiB layer without rebuilding it.
//
//	base (PushBase, "base:gzip" / "base:estargz"):
//	  layer 0  BusyboxLayer  /bin/busybox + applet symlinks, /etc/passwd,
//	                         /etc/group, /tmp, /root, /dev, /proc, /sys
//	  layer 1  DataLayer     /data/small.txt (SmallText), /data/medium.bin,
//	                         /data/hello.sh, /data/dir/nested.txt, /data/link.txt
//	large (PushLarge, "large:gzip" / "large:estargz"): base, plus
//	  layer 2  LargeLayer    /data/large.bin (DefaultLargeSize incompressible
//	                         bytes), then /data/small.txt (LargeSmallText)
//
// Gzip layers are plain gzip; EStargz layers come from estargz.Build with
// default options (no prioritized files, so a .no.prefetch.landmark) and
// carry the containerd.io/snapshot/stargz/toc.digest and
// io.containers.estargz.uncompressed-size annotations. estargz.Build splits
// its work by GOMAXPROCS, so eStargz blob digests are stable within a
// machine but may differ between machines with different core counts.
//
// Other images come from a FixtureSpec of Layers (FileLayer, TarLayer,
// LayerTar for whiteouts and opaque directories) and a config, built by
// BuildImage and pushed by PushImage or (Image).PushTo. FetchImage pulls an
// image back with its blobs; WriteOCILayout and OCITar give it as an OCI
// layout for tests that need an archive.
//
// # Requirements
//
// RequireRoot, RequireRunc, RequireFUSE, RequireContainerd and
// RequireIntegration skip a test, with the reason, when the machine lacks
// what it needs; RequireIntegration also skips under -short. With
// STARGAZER_REQUIRE_STRICT set (see StrictEnv) a missing requirement fails
// the test instead, so CI cannot pass by skipping.
package testutil

package compression

// PrefetchSizeAnnotation is the layer descriptor annotation stargazer's
// exporter writes on every layer that has a .prefetch.landmark: the offset
// of the landmark entry in the blob, as a decimal number of bytes. That is
// exactly the range [0, size) the stargz snapshotter prefetches, which it
// otherwise learns only from the TOC, after fetching and parsing it;
// stargazerd reads it from the manifest to start that download with the
// layer's first request.
const PrefetchSizeAnnotation = "io.github.stargazer-build.prefetch-size"

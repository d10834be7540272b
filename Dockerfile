# syntax=docker/dockerfile:1
# Images of stargazer. `docker buildx build --target frontend -t REF .`
# builds the Dockerfile frontend a "# syntax=REF" line runs; without
# network access, `stargazer frontend push REF` assembles the same image
# from the static executable.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -o /out/ ./cmd/stargazer ./cmd/stargazerd ./cmd/stargazer-frontend

# The frontend image: one static executable, which is also the tracer its
# builds mount.
FROM scratch AS frontend
COPY --from=build /out/stargazer-frontend /bin/stargazer-frontend
ENV PATH=/bin
LABEL moby.buildkit.frontend.network.none="true"
LABEL moby.buildkit.frontend.caps="moby.buildkit.frontend.inputs,moby.buildkit.frontend.subrequests,moby.buildkit.frontend.contexts"
ENTRYPOINT ["/bin/stargazer-frontend"]

# The daemon and the CLI, for running stargazerd in a container (needs
# --privileged for runc, overlayfs and FUSE).
FROM scratch AS binaries
COPY --from=build /out/ /

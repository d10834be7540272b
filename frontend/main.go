package frontend

import (
	"github.com/moby/buildkit/frontend/gateway/grpcclient"
	"github.com/moby/buildkit/util/appcontext"
)

// Main runs the frontend as a BuildKit gateway frontend image does: over
// the connection BuildKit gives the container through its environment.
func Main() error {
	return grpcclient.RunFromEnvironment(appcontext.Context(), Build)
}

// ImageLabels are the labels a frontend image needs: the gateway API
// capabilities it uses, and no network.
var ImageLabels = map[string]string{
	"moby.buildkit.frontend.network.none": "true",
	"moby.buildkit.frontend.caps":         "moby.buildkit.frontend.inputs,moby.buildkit.frontend.subrequests,moby.buildkit.frontend.contexts",
}

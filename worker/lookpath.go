package worker

import "os/exec"

var lookPath = exec.LookPath

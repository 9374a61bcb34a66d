package envoysim_test

import "github.com/purser-dev/purser/envoy"

var envoyFiles = envoy.Files

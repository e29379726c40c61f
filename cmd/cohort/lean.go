//go:build enclave || ego

package main

import (
	"context"
	"fmt"
	"io"
)

// This is the measured binary: the roles (issuer, unit, manager) and the
// commands beside them, without the tools of tools.go, so that what a
// measurement policy pins holds only what must be trusted. The tool names
// still parse, to say where they are.

const toolsUsage = ""

const buildNote = `
This is the measured binary (-tags enclave): the roles, without dev, demo,
deploy, user, faults and bench, which a build without the tag has.
`

// toolNames are the commands only the tools build has.
var toolNames = []string{"dev", "demo", "bench", "deploy", "user", "faults"}

// tools answers each tool's name with where to find it.
func tools() map[string]command {
	m := make(map[string]command, len(toolNames))
	for _, name := range toolNames {
		m[name] = func(context.Context, []string, io.Writer, io.Writer) error {
			return fmt.Errorf("%w: %q is a tool, not in the measured binary (built with -tags enclave): build cohort without the tag for it", errUsage, name)
		}
	}
	return m
}

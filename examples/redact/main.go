// Command redact is a cohort task of its own: every process of it is a
// unit of the task "redact", which answers each call with the text it
// carries, its e-mail addresses, payment card numbers and phone numbers
// masked. The text reaches the unit encrypted to its cluster, and the
// answer goes back encrypted to the caller: whoever runs NATS or the
// manager sees neither.
//
// Build it, host it on cohort dev, and call it:
//
//	go build -o redact ./examples/redact
//	go run ./cmd/cohort dev --data dev-data --task redact=./redact
//
// dev prints the commands that start its units (./redact --creds … --issuer-measurement …)
// and how to call the cluster; README.md beside this file walks through the whole loop.
package main

import "github.com/cohort-dev/cohort/task"

func main() {
	task.Main(task.Config{Name: "redact", Handle: handle, SideEffectFree: true})
}

package task_test

import (
	"context"
	"strings"

	"github.com/cohort-dev/cohort/task"
)

// A task's whole program: every process of it is one unit of task "upper",
// which answers each call with its request in capitals. Build it, host it
// with `cohort dev --task upper=./upper`, and start its units with the
// commands dev prints.
func ExampleMain() {
	task.Main(task.Config{
		Name:           "upper",
		SideEffectFree: true, // a call changes nothing: one whose unit died may run again
		Handle: func(_ context.Context, c task.Call) ([]byte, error) {
			return []byte(strings.ToUpper(string(c.Data))), nil
		},
	})
}

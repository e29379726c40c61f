package mpc

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestRun runs the whole example: three clinics on the real embedded NATS
// server learn the right sum, mean and maximum, and the outsider is refused.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	rep, err := Run(ctx, Config{Out: &out})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	want := Result{Parties: []string{"clinic-east", "clinic-north", "clinic-south"}, Sum: 116, Mean: 116.0 / 3, Max: 58}
	for task, r := range rep.Results {
		if !r.Equal(want) {
			t.Errorf("%s learned %+v, want %+v", task, r, want)
		}
	}
	if len(rep.Results) != 3 {
		t.Errorf("%d results, want 3", len(rep.Results))
	}
	if !strings.Contains(rep.Refusal.Error(), `group "clinics"`) {
		t.Errorf("the outsider's refusal does not name the group: %v", rep.Refusal)
	}
	// The walkthrough prints the results, never another party's figure.
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, "clinic-north knows") && (strings.Contains(line, " 17,") || strings.Contains(line, " 58,")) {
			t.Errorf("a party's line shows another's figure: %q", line)
		}
	}
}

func TestAggregate(t *testing.T) {
	r := aggregate(map[string]int64{"b": 0, "a": MaxFigure})
	if r.Sum != MaxFigure || r.Max != MaxFigure || r.Mean != MaxFigure/2 || r.Parties[0] != "a" {
		t.Fatalf("%+v", r)
	}
}

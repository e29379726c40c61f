package access

import (
	"slices"
	"testing"

	"github.com/cohort-dev/cohort/messages"
)

// TestEvidenceImportsShareTheRequester: every account that imports the
// issuer's evidence shares its requesters, so that the server stamps each
// request with who sent it, which the issuer rates (issuer/evidence.go).
func TestEvidenceImportsShareTheRequester(t *testing.T) {
	creds, err := LoadOrCreateAll(t.TempDir(), testDeployment)
	if err != nil {
		t.Fatal(err)
	}
	accounts, err := Accounts(testDeployment, creds)
	if err != nil {
		t.Fatal(err)
	}
	var importers []string
	for name, a := range accounts {
		imports, _ := a.(map[string]any)["imports"].([]any)
		for _, imp := range imports {
			m := imp.(map[string]any)
			svc := m["service"].(map[string]any)
			if svc["subject"] != messages.SubjectEvidence {
				continue
			}
			importers = append(importers, name)
			if m["share"] != true || svc["account"] != IssuerAccount {
				t.Errorf("account %s imports the evidence as %v, want it from %s, sharing its requesters", name, m, IssuerAccount)
			}
		}
	}
	slices.Sort(importers)
	want := []string{"cluster-dev", "cluster-prod", "manager", "operator", "user-alice", "user-bob"}
	if !slices.Equal(importers, want) {
		t.Errorf("the evidence imported by %v, want %v", importers, want)
	}
}

package messages

import "testing"

func validStateKeyBody() *StateKeyBody {
	return &StateKeyBody{V: Version, KeyID: fill(1, KeyIDSize), KEM: KEMMLKEM768X25519, PublicKey: fill(2, MaxPublicKey), Nonce: fill(3, NonceSize), Time: 1_700_000_000_000_000_000}
}

func validPolicyApply() *PolicyApply {
	return &PolicyApply{V: Version, Document: []byte("version: 2\n"), Signatures: []PolicySignature{{Key: fill(4, AdminKeySize), Signature: fill(5, AdminSignatureSize)}}}
}

func validPolicyShowReply() *PolicyShowReply {
	return &PolicyShowReply{V: Version, Version: 2, Hash: fill(6, HashSize), Document: []byte("version: 2\n"),
		Signatures: validPolicyApply().Signatures,
		History:    []PolicyHistory{{Version: 1, Hash: fill(7, HashSize), Applied: 1}, {Version: 2, Hash: fill(6, HashSize), Signers: []string{"ada", "bo"}, Applied: 2}}}
}

func validRecoverOffer() *RecoverOffer {
	return &RecoverOffer{V: Version, Instance: "a1b2c3", KeyID: fill(1, KeyIDSize), Nonce: fill(3, NonceSize), KEM: KEMMLKEM768X25519,
		PublicKey: fill(2, 1216), Index: 2, Share: fill(8, 80), Need: 2, Have: 1, Policy: 3, Root: fill(9, 500), Commit: fill(10, HashSize), Signature: fill(11, 71)}
}

func FuzzStateKeyRequest(f *testing.F) {
	fuzzDecoder(f, MaxStateKeyRequest, &StateKeyRequest{V: Version, Body: fill(1, 1300), Evidence: fill(2, 400)})
}

func FuzzStateKeyBody(f *testing.F) { fuzzDecoder(f, MaxStateKeyBody, validStateKeyBody()) }

func FuzzStateKeyReply(f *testing.F) {
	fuzzDecoder(f, MaxStateKeyReply, &StateKeyReply{V: Version, Body: fill(1, 1300), Evidence: fill(2, 400)})
}

func FuzzStateKeyReplyBody(f *testing.F) {
	fuzzDecoder(f, MaxStateKeyReplyBody, &StateKeyReplyBody{V: Version, RequestHash: fill(1, HashSize), KeyID: fill(2, KeyIDSize), Sealed: fill(3, 1168), Policy: 4})
}

func FuzzPolicyApply(f *testing.F) { fuzzDecoder(f, MaxPolicyApply, validPolicyApply()) }

func FuzzPolicyApplied(f *testing.F) {
	fuzzDecoder(f, MaxPolicyApplied, &PolicyApplied{V: Version, Version: 2, Hash: fill(1, HashSize), Signers: []string{"ada"}, Reissued: []string{"task/demo"}})
}

func FuzzPolicyShowReply(f *testing.F) { fuzzDecoder(f, MaxPolicyShowReply, validPolicyShowReply()) }

func FuzzRecoverHello(f *testing.F) {
	fuzzDecoder(f, MaxRecoverHello, &RecoverHello{V: Version, Nonce: fill(1, NonceSize), RecoveryKey: fill(2, RecoveryKeySize)})
}

func FuzzRecoverReply(f *testing.F) {
	fuzzDecoder(f, MaxRecoverReply, &RecoverReply{V: Version, Body: fill(1, 1500), Evidence: fill(2, 400)})
}

func FuzzRecoverOffer(f *testing.F) { fuzzDecoder(f, MaxRecoverOffer, validRecoverOffer()) }

func FuzzRecoverShare(f *testing.F) {
	fuzzDecoder(f, MaxRecoverShare, &RecoverShare{V: Version, OfferHash: fill(1, HashSize), Sealed: fill(2, 1168)})
}

func FuzzRecoverAck(f *testing.F) {
	fuzzDecoder(f, MaxRecoverAck, &RecoverAck{V: Version, Have: 1, Need: 2})
}

// Every trust message's valid example validates, and each bound refuses.
func TestTrustMessagesValidate(t *testing.T) {
	for name, m := range map[string]Validator{
		"state key body": validStateKeyBody(), "policy apply": validPolicyApply(), "policy show": validPolicyShowReply(), "recover offer": validRecoverOffer(),
	} {
		if err := m.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	bad := map[string]Validator{
		"short key id":        &StateKeyBody{V: Version, KeyID: fill(1, 15), PublicKey: fill(2, 32), Nonce: fill(3, NonceSize)},
		"short admin key":     &PolicyApply{V: Version, Document: []byte("x"), Signatures: []PolicySignature{{Key: fill(4, 31), Signature: fill(5, 64)}}},
		"no document":         &PolicyApply{V: Version},
		"too many signatures": &PolicyApply{V: Version, Document: []byte("x"), Signatures: make([]PolicySignature, MaxPolicySignatures+1)},
		"bad instance":        &RecoverOffer{V: Version, Instance: "A-1", KeyID: fill(1, KeyIDSize), Nonce: fill(3, NonceSize), PublicKey: fill(2, 32), Index: 1, Share: fill(8, 80), Need: 1},
		"index zero":          &RecoverOffer{V: Version, Instance: "a", KeyID: fill(1, KeyIDSize), Nonce: fill(3, NonceSize), PublicKey: fill(2, 32), Share: fill(8, 80), Need: 1},
		"old version":         &RecoverAck{V: 4},
		"empty signer":        &PolicyShowReply{V: Version, Hash: fill(6, HashSize), Document: []byte("x"), History: []PolicyHistory{{Hash: fill(1, HashSize), Signers: []string{""}}}},
	}
	for name, m := range bad {
		if err := m.Validate(); err == nil {
			t.Errorf("%s: validates", name)
		}
	}
}

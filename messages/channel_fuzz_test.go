package messages

import (
	"testing"
	"time"
)

func validHello() *Hello {
	return &Hello{V: Version, Cluster: "dev", Task: "demo", KEM: KEMMLKEM768X25519, PublicKey: fill(3, MaxPublicKey), Nonce: fill(4, NonceSize), Time: time.Unix(1_700_000_000, 0).UnixNano()}
}

func validHelloReplyBody() *HelloReplyBody {
	return &HelloReplyBody{V: Version, Session: fill(5, SessionIDSize), Enc: fill(6, MaxEnc), Unit: "demo-1", Expires: 1_700_003_600_000_000_000, Chain: [][]byte{fill(7, 600)}}
}

func validSessionRecord() *SessionRecord {
	return &SessionRecord{V: Version, Cluster: "dev", Session: fill(5, SessionIDSize), Epoch: 1, Expires: 1_700_003_600_000_000_000, Sealed: fill(8, 120), Unit: "demo-1", Token: fill(9, TokenSize)}
}

func validCall() *Call {
	return &Call{V: Version, Session: fill(5, SessionIDSize), Seq: 7, Time: 1_700_000_000_000_000_000, Ciphertext: fill(10, 1040)}
}

func FuzzHello(f *testing.F) {
	anyTask := validHello()
	anyTask.Task = ""
	fuzzManagerDecoder(f, MaxHello, nil, validHello(), anyTask)
}

func FuzzHelloReply(f *testing.F) {
	fuzzManagerDecoder(f, MaxHelloReply, nil, &HelloReply{V: Version, Body: mustMarshal(f, validHelloReplyBody()), Signature: fill(11, 71)})
}

func FuzzHelloReplyBody(f *testing.F) {
	two := validHelloReplyBody()
	two.Chain = append(two.Chain, fill(12, 500))
	fuzzManagerDecoder(f, MaxHelloReplyBody, nil, validHelloReplyBody(), two)
}

func FuzzSessionRecord(f *testing.F) {
	stored := validSessionRecord()
	stored.Unit, stored.Token = "", nil
	closed := validSessionRecord()
	closed.Closed = true
	fuzzManagerDecoder(f, MaxSessionRecord, nil, validSessionRecord(), stored, closed)
}

func FuzzSessionAck(f *testing.F) {
	fuzzManagerDecoder(f, MaxSessionAck, nil, &SessionAck{V: Version, Sequence: 42})
}

func FuzzSessionKeys(f *testing.F) {
	fuzzManagerDecoder(f, MaxSessionKeys, nil,
		&SessionKeys{V: Version, C2S: fill(13, 32), S2C: fill(14, 32), Task: "demo", User: "alice", Expires: 1},
		&SessionKeys{V: Version, Task: "demo", User: "alice", Expires: 1, Closed: true})
}

func FuzzCallClaim(f *testing.F) {
	fuzzManagerDecoder(f, MaxCallClaim, nil,
		&CallClaim{V: Version, Unit: "demo-1", State: ClaimRunning, MAC: fill(15, ClaimMACSize)},
		&CallClaim{V: Version, Unit: "demo-1", State: ClaimAnswered, Prev: 41, Answer: fill(16, 300), MAC: fill(17, ClaimMACSize)},
		&CallClaim{V: Version, Unit: "demo-2", State: ClaimClosed, MAC: fill(18, ClaimMACSize)})
}

func FuzzCall(f *testing.F) {
	fuzzManagerDecoder(f, MaxCall, nil, validCall())
}

func FuzzCallReply(f *testing.F) {
	fuzzManagerDecoder(f, MaxCallReply, nil, &CallReply{V: Version, Unit: "demo-2", Ciphertext: fill(15, 1052)})
}

package manager

import (
	"context"
	"strings"
	"time"

	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

// readerTimeout bounds the JetStream API's answer to a forwarded request.
const readerTimeout = 5 * time.Second

// serveReader creates an operator's consumer on the audit stream: it
// forwards the request to the JetStream API if it is a reader's
// (events.VetReader), and answers with the API's answer. The operator's
// account reaches this endpoint in place of the API's consumer create
// (package access), so that no operator makes a consumer that pushes.
func (m *Manager) serveReader(ctx context.Context, r service.Msg) ([]byte, *messages.Error) {
	rest, ok := strings.CutPrefix(r.Subject, messages.SubjectReaderCreate+".")
	if !ok || rest == "" {
		return nil, messages.Refusal(messages.CodeWrongSubject, "the subject %q names no consumer", r.Subject)
	}
	ctx, cancel := context.WithTimeout(ctx, readerTimeout)
	defer cancel()
	st, err := m.js.Stream(ctx, events.StreamName)
	if err != nil {
		m.log.Warn("reader: the audit stream's information", "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "the audit stream's information is unavailable")
	}
	rd, err := events.VetReader(r.Data, st.CachedInfo().State.Consumers)
	if err != nil {
		m.log.Info("reader refused", "consumer", rest, "reason", err)
		return events.ReaderRefusal(err), messages.Refusal(messages.CodeReaderRefused, "%s", err)
	}
	msg, err := m.cfg.Conn.RequestWithContext(ctx, "$JS.API.CONSUMER.CREATE."+events.StreamName+"."+rest, rd.Request)
	if err != nil {
		m.log.Warn("reader: consumer create", "consumer", rest, "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "the JetStream API did not answer")
	}
	m.log.Info("reader consumer", "consumer", rest, "update", rd.Update)
	return msg.Data, nil
}

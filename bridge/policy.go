package bridge

import "fmt"

// Policy is what a POP3 DELE becomes upstream at QUIT: one of the
// constants below. It decodes itself from configuration text.
type Policy string

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Policy) UnmarshalText(b []byte) error {
	switch v := Policy(b); v {
	case PolicyMove, PolicyExpunge, PolicyFlag, PolicyHide:
		*p = v
		return nil
	}
	return fmt.Errorf("unknown value %q (want move, expunge, flag or hide)", b)
}

// Delete policies: what a POP3 DELE becomes upstream at QUIT.
const (
	PolicyMove    = "move"    // UID MOVE to the Trash (COPY + UID EXPUNGE without MOVE)
	PolicyExpunge = "expunge" // \Deleted + UID EXPUNGE of exactly those messages
	PolicyFlag    = "flag"    // set flags; the device no longer sees the message
	PolicyHide    = "hide"    // nothing upstream; the device no longer sees the message
)

// capabilities is what a delete policy asks of the upstream
// (*upstream.Conn has it).
type capabilities interface {
	HasUIDPlus() bool
	HasMove() bool
}

// policyNeeds returns why the upstream cannot carry out policy, or nil
// when it can. `popbridge check` and QUIT both ask it, so they never
// disagree.
func policyNeeds(caps capabilities, policy Policy) error {
	switch policy {
	case PolicyExpunge:
		if !caps.HasUIDPlus() {
			return fmt.Errorf("delete.policy = expunge needs UID EXPUNGE (UIDPLUS), which the upstream lacks: choose move, flag or hide")
		}
	case PolicyMove:
		if !caps.HasMove() && !caps.HasUIDPlus() {
			return fmt.Errorf("delete.policy = move needs MOVE or UIDPLUS, which the upstream lacks: choose flag or hide")
		}
	}
	return nil
}

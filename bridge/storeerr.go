package bridge

import (
	"errors"
	"syscall"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
)

// storeProblem reports whether err from the state store is one that
// lasts until the operator acts, and what the client is told about it:
// the store's disk is full or over quota, its file system is read-only,
// or its data is damaged. Other errors (a database that is restarting,
// a timeout) are not.
func storeProblem(err error) (*pop3.Error, bool) {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, state.ErrFull):
		return &pop3.Error{Code: pop3.CodeSysTemp, Text: "state store full (disk)", Err: err}, true
	case errors.Is(err, syscall.EROFS):
		return &pop3.Error{Code: pop3.CodeSysPerm, Text: "state store read-only", Err: err}, true
	case errors.Is(err, state.ErrDamaged):
		return &pop3.Error{Code: pop3.CodeSysPerm, Text: "state store damaged", Err: err}, true
	}
	return nil, false
}

// storeTrouble logs err at error level, with its cause, when storeProblem
// knows it, and returns what the client is told; otherwise it returns
// nil and logs nothing.
func storeTrouble(log *zap.Logger, err error) *pop3.Error {
	pe, ok := storeProblem(err)
	if !ok {
		return nil
	}
	log.Error(pe.Text, zap.Error(err))
	return pe
}

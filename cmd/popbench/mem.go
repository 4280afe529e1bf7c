package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// memWatch samples the memory of the server under test while a run goes
// on (Linux /proc): one process (popbridge: -mem-pid), and/or the children
// of a process with a given command name (Dovecot's pop3 processes:
// -mem-children and -mem-comm), summed.
type memWatch struct {
	pid      int // one process; 0: none
	parent   int // children of this process; 0: none
	comm     string
	interval time.Duration

	mu          sync.Mutex
	hwmReset    bool          // VmHWM of pid was reset at start
	pidPeakRSS  int64         // sampled, kB
	childPeak   int64         // sampled sum of the children's VmRSS, kB
	childHWM    map[int]int64 // largest VmHWM seen per child, kB
	childSeen   map[int]bool  // children seen at all
	childMaxNum int           // most children alive at one sample
	stop        chan struct{}
	done        chan struct{}
}

func newMemWatch(pid, parent int, comm string, interval time.Duration) *memWatch {
	if pid == 0 && parent == 0 {
		return nil
	}
	if interval <= 0 {
		interval = 50 * time.Millisecond
	}
	return &memWatch{pid: pid, parent: parent, comm: comm, interval: interval,
		childHWM: map[int]int64{}, childSeen: map[int]bool{}}
}

// start resets the peak RSS of pid (writing 5 to /proc/PID/clear_refs,
// Linux 4.0+, needs the right to) and starts sampling.
func (m *memWatch) start() {
	if m == nil {
		return
	}
	if m.pid != 0 {
		err := os.WriteFile("/proc/"+strconv.Itoa(m.pid)+"/clear_refs", []byte("5"), 0)
		m.hwmReset = err == nil
	}
	m.stop, m.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(m.done)
		t := time.NewTicker(m.interval)
		defer t.Stop()
		for {
			m.sample()
			select {
			case <-m.stop:
				m.sample()
				return
			case <-t.C:
			}
		}
	}()
}

func (m *memWatch) finish() {
	if m == nil {
		return
	}
	close(m.stop)
	<-m.done
}

func (m *memWatch) sample() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pid != 0 {
		if st, ok := procStatus(m.pid); ok {
			m.pidPeakRSS = max(m.pidPeakRSS, st["VmRSS"])
		}
	}
	if m.parent != 0 {
		var sum int64
		n := 0
		for _, pid := range childrenOf(m.parent, m.comm) {
			st, ok := procStatus(pid)
			if !ok {
				continue
			}
			n++
			sum += st["VmRSS"]
			m.childSeen[pid] = true
			m.childHWM[pid] = max(m.childHWM[pid], st["VmHWM"])
		}
		m.childPeak = max(m.childPeak, sum)
		m.childMaxNum = max(m.childMaxNum, n)
	}
}

// memReport is what a memWatch found, in kB.
type memReport struct {
	PID          int    `json:"pid,omitempty"`
	HWMReset     bool   `json:"hwm_reset,omitempty"`
	VmHWM        int64  `json:"vm_hwm_kb,omitempty"`         // of pid, at the end
	PeakRSS      int64  `json:"peak_rss_kb,omitempty"`       // of pid, sampled
	Parent       int    `json:"parent,omitempty"`            //
	Comm         string `json:"comm,omitempty"`              //
	Children     int    `json:"children,omitempty"`          // distinct children seen
	MaxChildren  int    `json:"max_children,omitempty"`      // alive at once
	ChildPeakRSS int64  `json:"child_peak_rss_kb,omitempty"` // sampled sum
	ChildSumHWM  int64  `json:"child_sum_hwm_kb,omitempty"`  // sum of each child's VmHWM
}

func (m *memWatch) report() *memReport {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r := &memReport{PID: m.pid, HWMReset: m.hwmReset, PeakRSS: m.pidPeakRSS, Parent: m.parent, Comm: m.comm,
		Children: len(m.childSeen), MaxChildren: m.childMaxNum, ChildPeakRSS: m.childPeak}
	if m.pid != 0 {
		if st, ok := procStatus(m.pid); ok {
			r.VmHWM = st["VmHWM"]
		}
	}
	for _, h := range m.childHWM {
		r.ChildSumHWM += h
	}
	return r
}

// procStatus returns the kB fields of /proc/PID/status (VmRSS, VmHWM ...).
func procStatus(pid int) (map[string]int64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, false
	}
	out := map[string]int64{}
	for _, line := range bytes.Split(b, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || !bytes.HasPrefix(k, []byte("Vm")) {
			continue
		}
		f := strings.Fields(string(v))
		if len(f) >= 1 {
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err == nil {
				out[string(k)] = n
			}
		}
	}
	return out, true
}

// childrenOf returns the processes whose parent is ppid and, when comm is
// set, whose command name is comm.
func childrenOf(ppid int, comm string) []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		open, close := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(string(b[close+1:]))
		if len(f) < 2 {
			continue
		}
		parent, _ := strconv.Atoi(f[1])
		if parent != ppid || comm != "" && string(b[open+1:close]) != comm {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b[:open])))
		if err == nil {
			out = append(out, pid)
		}
	}
	return out
}

package hooks

import "testing"

func TestDecide(t *testing.T) {
	type want struct {
		d Decision
		f FenceResult
	}
	proceed := want{DecisionProceed, FenceNone}
	veto := want{DecisionVeto, FenceNone}
	tests := []struct {
		kind Kind
		o    Outcome
		code int
		want want
	}{
		// Notify: nothing ever stops the action.
		{KindNotify, OutcomeUnconfigured, -1, proceed},
		{KindNotify, OutcomeExited, 0, proceed},
		{KindNotify, OutcomeExited, 1, proceed},
		{KindNotify, OutcomeExited, ExitNotHandled, proceed},
		{KindNotify, OutcomeExited, 255, proceed},
		{KindNotify, OutcomeTimedOut, -1, proceed},
		{KindNotify, OutcomeStartFailed, -1, proceed},
		{KindNotify, OutcomeCanceled, -1, proceed},
		{KindNotify, OutcomeSignaled, -1, proceed},

		// Veto: 0, 100 and unconfigured proceed; everything else vetoes.
		{KindVeto, OutcomeUnconfigured, -1, proceed},
		{KindVeto, OutcomeExited, 0, proceed},
		{KindVeto, OutcomeExited, ExitNotHandled, proceed},
		{KindVeto, OutcomeExited, 1, veto},
		{KindVeto, OutcomeExited, 99, veto},
		{KindVeto, OutcomeExited, 101, veto},
		{KindVeto, OutcomeExited, 127, veto},
		{KindVeto, OutcomeExited, 255, veto},
		{KindVeto, OutcomeTimedOut, -1, veto},
		{KindVeto, OutcomeStartFailed, -1, veto},
		{KindVeto, OutcomeCanceled, -1, veto},
		{KindVeto, OutcomeSignaled, -1, veto},

		// Fence: DRBD's codes; nothing known proceeds, failure vetoes.
		{KindFence, OutcomeUnconfigured, -1, want{DecisionProceed, FenceNoResult}},
		{KindFence, OutcomeExited, 0, want{DecisionProceed, FenceNoResult}},
		{KindFence, OutcomeExited, ExitNotHandled, want{DecisionProceed, FenceNoResult}},
		{KindFence, OutcomeExited, 3, want{DecisionProceed, FencePeerInconsistent}},
		{KindFence, OutcomeExited, 4, want{DecisionProceed, FencePeerOutdated}},
		{KindFence, OutcomeExited, 5, want{DecisionProceed, FencePeerUnreachable}},
		{KindFence, OutcomeExited, 6, want{DecisionVeto, FencePeerPrimary}},
		{KindFence, OutcomeExited, 7, want{DecisionProceed, FencePeerFenced}},
		{KindFence, OutcomeExited, 1, want{DecisionVeto, FenceFailed}},
		{KindFence, OutcomeExited, 2, want{DecisionVeto, FenceFailed}},
		{KindFence, OutcomeExited, 8, want{DecisionVeto, FenceFailed}},
		{KindFence, OutcomeExited, 126, want{DecisionVeto, FenceFailed}},
		{KindFence, OutcomeTimedOut, -1, want{DecisionVeto, FenceFailed}},
		{KindFence, OutcomeStartFailed, -1, want{DecisionVeto, FenceFailed}},
		{KindFence, OutcomeCanceled, -1, want{DecisionVeto, FenceFailed}},
		{KindFence, OutcomeSignaled, -1, want{DecisionVeto, FenceFailed}},
	}
	for _, tt := range tests {
		d, f := decide(tt.kind, tt.o, tt.code)
		if (want{d, f}) != tt.want {
			t.Errorf("decide(%s, %s, %d) = %s, %s; want %s, %s", tt.kind, tt.o, tt.code, d, f, tt.want.d, tt.want.f)
		}
	}
}

// TestDecideEveryCode checks the promise docs/hooks.md makes for every
// exit code: 0 and 100 never veto, and only fence handlers see 3..7.
func TestDecideEveryCode(t *testing.T) {
	for code := 0; code <= 255; code++ {
		for _, k := range []Kind{KindNotify, KindVeto, KindFence} {
			d, f := decide(k, OutcomeExited, code)
			if (code == 0 || code == ExitNotHandled) && d != DecisionProceed {
				t.Errorf("%s handler exit %d: %s, want proceed", k, code, d)
			}
			if k != KindFence && f != FenceNone {
				t.Errorf("%s handler exit %d: fence result %s", k, code, f)
			}
			if k == KindNotify && d != DecisionProceed {
				t.Errorf("notify handler exit %d: %s", code, d)
			}
		}
	}
}

func TestLookup(t *testing.T) {
	seen := map[Name]bool{}
	for _, s := range Specs() {
		if !s.Name.Valid() {
			t.Errorf("registry name %q is not valid", s.Name)
		}
		if seen[s.Name] {
			t.Errorf("registry lists %q twice", s.Name)
		}
		seen[s.Name] = true
		got, ok := Lookup(s.Name)
		if !ok || got != s {
			t.Errorf("Lookup(%q) = %+v, %v", s.Name, got, ok)
		}
		if (s.Kind != KindNotify) != s.Blocks {
			t.Errorf("%s: kind %s but Blocks=%v: only deciding handlers are waited for", s.Name, s.Kind, s.Blocks)
		}
	}
	if len(seen) != 12 {
		t.Errorf("registry has %d handlers, want 12", len(seen))
	}
	s, ok := Lookup("some-future-handler")
	if ok || s.Kind != KindNotify || s.Blocks {
		t.Errorf("unknown handler: %+v, %v; want notify, not blocking, false", s, ok)
	}
	// Specs hands out copies.
	Specs()[0].Kind = KindFence
	if s, _ := Lookup(BeforeResyncTarget); s.Kind != KindVeto {
		t.Errorf("Specs exposes the registry")
	}
}

func TestNameValid(t *testing.T) {
	for _, n := range []Name{"a", "fence-peer", "x1", "before-resync-target", Name(string(make([]byte, 0)) + "abc-9")} {
		if !n.Valid() {
			t.Errorf("%q not valid", n)
		}
	}
	long := make([]byte, MaxNameLen+1)
	for i := range long {
		long[i] = 'a'
	}
	for _, n := range []Name{"", "-x", "Fence", "a b", "a/b", "a_b", "a\x00", "ä", Name(long)} {
		if n.Valid() {
			t.Errorf("%q valid", n)
		}
	}
}

func TestStrings(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{KindVeto.String(), "veto"},
		{Kind(9).String(), "Kind(?)"},
		{OutcomeTimedOut.String(), "timed-out"},
		{Outcome(99).String(), "Outcome(?)"},
		{DecisionVeto.String(), "veto"},
		{Decision(7).String(), "Decision(?)"},
		{FencePeerOutdated.String(), "peer-outdated"},
		{FenceResult(99).String(), "FenceResult(?)"},
		{EventResponse.String(), "response"},
		{EventType(5).String(), "EventType(?)"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

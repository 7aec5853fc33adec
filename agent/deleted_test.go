package agent

import (
	"testing"
	"time"

	"github.com/weir-mesh/weir/proxy/netns"
)

func TestDeletedPods(t *testing.T) {
	var d deletedPods
	t0 := time.Unix(1000, 0)
	a, b := netns.ID{Dev: 4, Ino: 1}, netns.ID{Dev: 4, Ino: 2}
	d.add(a, "uid-a", t0)
	d.add(b, "", t0)
	for _, c := range []struct {
		ns   netns.ID
		uid  string
		at   time.Time
		want bool
	}{
		{a, "uid-a", t0.Add(time.Second), true},
		{a, "uid-other", t0.Add(time.Second), false}, // a new pod in a reused inode
		{b, "anyone", t0.Add(time.Second), true},     // DEL without a UID hides it from all
		{a, "uid-a", t0.Add(deletedTTL + time.Second), false},
	} {
		if got := d.has(c.ns, c.uid, c.at); got != c.want {
			t.Errorf("has(%v, %q, +%v) = %v, want %v", c.ns, c.uid, c.at.Sub(t0), got, c.want)
		}
	}
	// Old entries go at the next add.
	d.add(netns.ID{Dev: 4, Ino: 3}, "uid-c", t0.Add(2*deletedTTL))
	if len(d) != 1 {
		t.Fatalf("%d entries after expiry, want 1", len(d))
	}
}

package balance

import (
	"math"
	"sort"
)

// Ring size bounds used when NewRingHash is given zeros.
const (
	DefaultMinRingSize = 1024
	DefaultMaxRingSize = 1 << 20
	// MaxMaglevTableSize is the largest table NewMaglev picks by itself
	// (Envoy's default size, a prime).
	MaxMaglevTableSize = 65537
)

// hashProbes is how many further points a hash balancer tries when the
// host a key maps to is not allowed, before it falls back to a scan.
const hashProbes = 16

// RingHash is consistent hashing on a ring (Karger et al.): every host owns
// points on a 64-bit ring in proportion to its weight, and a key goes to the
// first point at or after its hash. Adding or removing a host moves only the
// keys next to its points, so clients (keyed by their address) keep their
// endpoint across endpoint changes. A key whose host is not allowed walks
// on to the next points.
//
// The zero value has no ring and maps keys to hosts by key modulo the host
// count (affinity only while the host set is unchanged). Pick returns None
// when no host is allowed.
type RingHash struct {
	points []ringPoint // sorted by hash
}

type ringPoint struct {
	hash uint64
	host int32
}

// NewRingHash builds a ring over ts with between minSize and maxSize points
// (zeros take the defaults); each host gets at least one point.
func NewRingHash(ts []Target, minSize, maxSize int) *RingHash {
	if minSize <= 0 {
		minSize = DefaultMinRingSize
	}
	if maxSize <= 0 {
		maxSize = max(DefaultMaxRingSize, minSize)
	}
	r := &RingHash{}
	if len(ts) == 0 {
		return r
	}
	var total uint64
	var minW uint64 = math.MaxUint64
	for _, t := range ts {
		total += t.weight()
		minW = min(minW, t.weight())
	}
	// Enough points that the lightest host gets at least one, and at least
	// minSize in all; at most maxSize.
	size := max(uint64(minSize), (total+minW-1)/minW)
	size = min(size, uint64(maxSize))
	r.points = make([]ringPoint, 0, size+uint64(len(ts)))
	for i, t := range ts {
		k := max(1, int(math.Round(float64(size)*float64(t.weight())/float64(total))))
		for j := range k {
			r.points = append(r.points, ringPoint{hash: hashAddr(t.Addr, uint64(j)), host: int32(i)})
		}
	}
	sort.Slice(r.points, func(a, b int) bool {
		pa, pb := r.points[a], r.points[b]
		return pa.hash < pb.hash || pa.hash == pb.hash && pa.host < pb.host
	})
	return r
}

// Pick implements the balancer interface.
func (r *RingHash) Pick(key uint64, hs Hosts) int {
	n := hs.Len()
	if n == 0 {
		return None
	}
	if len(r.points) == 0 {
		return modulo(key, hs, n)
	}
	h := mix64(key)
	p := r.points
	i := sort.Search(len(p), func(j int) bool { return p[j].hash >= h })
	for k := range min(len(p), hashProbes*4) {
		host := int(p[(i+k)%len(p)].host)
		if host < n && hs.Allowed(host) {
			return host
		}
	}
	return modulo(key, hs, n)
}

// Maglev is Google's Maglev consistent hashing: a lookup table of prime
// size filled by each host's own permutation of the slots, in turns
// proportional to weight. Lookups are one array index; the table spreads
// keys more evenly than a ring of the same memory, and a host change moves
// few keys. A key whose host is not allowed is re-hashed to other slots,
// so keys of allowed hosts never move.
//
// The zero value has no table and maps keys by modulo like RingHash's. Pick
// returns None when no host is allowed.
type Maglev struct {
	table []int32
}

// NewMaglev builds a table of size entries (a prime) over ts. Size 0 picks
// the smallest prime at or above 100 entries per host (Maglev's bound for
// about 1% imbalance), at least 1021 and at most 65537, so a node with
// thousands of small Maglev clusters does not spend 256KiB on each.
func NewMaglev(ts []Target, size int) *Maglev {
	if size <= 0 {
		size = AutoMaglevTableSize(len(ts))
	}
	m := &Maglev{}
	if len(ts) == 0 {
		return m
	}
	M := uint64(size)
	n := len(ts)
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	next := make([]uint64, n)
	credit := make([]float64, n)
	rate := make([]float64, n)
	var maxW uint64
	for _, t := range ts {
		maxW = max(maxW, t.weight())
	}
	for i, t := range ts {
		offset[i] = hashAddr(t.Addr, 0x6d61676c6576) % M
		skip[i] = hashAddr(t.Addr, 0x736b6970)%(M-1) + 1
		rate[i] = float64(t.weight()) / float64(maxW)
	}
	table := make([]int32, M)
	for j := range table {
		table[j] = -1
	}
	filled := uint64(0)
	for filled < M {
		for i := 0; i < n && filled < M; i++ {
			credit[i] += rate[i]
			for credit[i] >= 1 && filled < M {
				credit[i]--
				// Next free slot in host i's permutation.
				for {
					slot := (offset[i] + next[i]*skip[i]) % M
					next[i]++
					if table[slot] < 0 {
						table[slot] = int32(i)
						filled++
						break
					}
				}
			}
		}
	}
	m.table = table
	return m
}

// AutoMaglevTableSize is the table size NewMaglev picks for n hosts.
func AutoMaglevTableSize(n int) int {
	want := min(max(100*n, 1021), MaxMaglevTableSize)
	for p := want; ; p++ {
		if isPrime(p) {
			return p
		}
	}
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Pick implements the balancer interface.
func (m *Maglev) Pick(key uint64, hs Hosts) int {
	n := hs.Len()
	if n == 0 {
		return None
	}
	if len(m.table) == 0 {
		return modulo(key, hs, n)
	}
	M := uint64(len(m.table))
	h := mix64(key)
	for k := range uint64(hashProbes) {
		host := int(m.table[mix64(h+k*0x9e3779b97f4a7c15)%M])
		if host < n && hs.Allowed(host) {
			return host
		}
	}
	return modulo(key, hs, n)
}

// modulo maps key to a host by modulo, moving on to the next allowed one.
func modulo(key uint64, hs Hosts, n int) int {
	start := int(mix64(key) % uint64(n))
	for k := range n {
		i := (start + k) % n
		if hs.Allowed(i) {
			return i
		}
	}
	return None
}

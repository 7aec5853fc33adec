package redis

import (
	"errors"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/proxy/rpc"
)

const testMax = 1 << 20

func cmd(args ...string) string {
	var b strings.Builder
	b.WriteString("*" + itoa(len(args)) + "\r\n")
	for _, a := range args {
		b.WriteString("$" + itoa(len(a)) + "\r\n" + a + "\r\n")
	}
	return b.String()
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	s := ""
	for ; n > 0; n /= 10 {
		s = string(rune('0'+n%10)) + s
	}
	return s
}

func decode(t *testing.T, in string, from rpc.Side) (*Frame, int, error) {
	t.Helper()
	f, n, err := Codec{}.Decode([]byte(in), from, testMax)
	if err != nil {
		return nil, n, err
	}
	return f.(*Frame), n, nil
}

func TestDecodeCommands(t *testing.T) {
	for _, tc := range []struct {
		in        string
		kind      rpc.Kind
		name, key string
		args      int
	}{
		{cmd("SET", "k1", "v1"), rpc.Request, "SET", "k1", 3},
		{cmd("get", "user:{42}:name"), rpc.Request, "get", "user:{42}:name", 2},
		{cmd("PING"), rpc.Request, "PING", "", 1},
		{cmd("MGET", "a", "b"), rpc.Request, "MGET", "a", 3},
		{cmd("EVAL", "return 1", "1", "k", "x"), rpc.Request, "EVAL", "k", 5},
		{cmd("EVAL", "return 1", "0"), rpc.Request, "EVAL", "", 3},
		{cmd("XREAD", "COUNT", "2", "STREAMS", "s1", "0"), rpc.Request, "XREAD", "s1", 6},
		{cmd("BITOP", "AND", "dest", "a"), rpc.Request, "BITOP", "dest", 4},
		{cmd("SET", "", "bin\r\nary"), rpc.Request, "SET", "", 3},
		{"PING\r\n", rpc.Request, "PING", "", 1},
		{"set  k  v\n", rpc.Request, "set", "k", 3},
		{"\r\n", rpc.Oneway, "", "", 0},
		{"*0\r\n", rpc.Oneway, "", "", 0},
		{"*-1\r\n", rpc.Oneway, "", "", 0},
	} {
		f, n, err := decode(t, tc.in+"*1\r\n", rpc.Client)
		if err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		if n != len(tc.in) || string(f.Bytes()) != tc.in || f.Kind() != tc.kind || f.Args() != tc.args {
			t.Fatalf("%q: n=%d kind=%v args=%d", tc.in, n, f.Kind(), f.Args())
		}
		if got := string(f.Attr(AttrCommand)); got != tc.name {
			t.Errorf("%q: command %q, want %q", tc.in, got, tc.name)
		}
		if got := string(f.Attr(AttrKey)); got != tc.key {
			t.Errorf("%q: key %q, want %q", tc.in, got, tc.key)
		}
	}
}

func TestDecodeReplies(t *testing.T) {
	for _, in := range []string{
		"+OK\r\n", "-ERR wrong\r\n", ":42\r\n", ":-7\r\n", "$3\r\nabc\r\n", "$-1\r\n", "$0\r\n\r\n",
		"*-1\r\n", "*0\r\n", "*2\r\n$1\r\na\r\n:1\r\n", "*2\r\n*1\r\n+x\r\n*0\r\n",
		"_\r\n", ",3.14\r\n", "#t\r\n", "(12345678901234567890\r\n", "!3\r\nerr\r\n", "=7\r\ntxt:abc\r\n",
		"%1\r\n+k\r\n:1\r\n", "~2\r\n+a\r\n+b\r\n", "|1\r\n+ttl\r\n:3\r\n+value\r\n",
	} {
		f, n, err := decode(t, in+"+next\r\n", rpc.Server)
		if err != nil || n != len(in) || f.Kind() != rpc.Response || f.Attr(AttrCommand) != nil {
			t.Fatalf("%q: n=%d err=%v", in, n, err)
		}
	}
	f, _, err := decode(t, ">2\r\n+message\r\n+x\r\n", rpc.Server)
	if err != nil || !f.Push() || f.Kind() == rpc.Response {
		t.Fatalf("push: %+v %v", f, err)
	}
}

// TestNeedMoreEveryPrefix: every proper prefix of a frame needs more, with
// a length hint above the prefix and never beyond the frame.
func TestNeedMoreEveryPrefix(t *testing.T) {
	for _, tc := range []struct {
		in   string
		from rpc.Side
	}{
		{cmd("SET", "key", strings.Repeat("v", 100)), rpc.Client},
		{cmd("MSET", "a", "1", "b", "2"), rpc.Client},
		{"GET inline\r\n", rpc.Client},
		{"*3\r\n$3\r\nabc\r\n*2\r\n:1\r\n$-1\r\n%1\r\n+a\r\n_\r\n", rpc.Server},
		{"|1\r\n+a\r\n+b\r\n$5\r\nhello\r\n", rpc.Server},
	} {
		for k := 1; k < len(tc.in); k++ {
			_, n, err := decode(t, tc.in[:k], tc.from)
			if !errors.Is(err, rpc.ErrNeedMore) || n <= k || n > len(tc.in) {
				t.Fatalf("%q prefix %d: hint %d, %v", tc.in, k, n, err)
			}
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		from rpc.Side
		want error
	}{
		{"*1\r\n:1\r\n", rpc.Client, errNotBulk},
		{"*1\r\n$-1\r\n", rpc.Client, errBadLength},
		{"*x\r\n", rpc.Client, errBadLength},
		{"*1\n", rpc.Client, errBadLength},
		{"*1\r\n$1\r\nab\r\n", rpc.Client, errNoCRLF},
		{"*1\r\n$2000000\r\n", rpc.Client, rpc.ErrFrameTooLarge},
		{"*999999999\r\n", rpc.Client, rpc.ErrFrameTooLarge},
		{"*1\r\n$99999999999999999999\r\n", rpc.Client, rpc.ErrFrameTooLarge},
		{strings.Repeat("a", maxInline), rpc.Client, errInlineLarge},
		{"?\r\n", rpc.Server, errBadType},
		{"+OK\n", rpc.Server, errNoCRLF},
		{"$?\r\n", rpc.Server, errStreamed},
		{"!-1\r\n", rpc.Server, errBadLength},
		{"%-1\r\n", rpc.Server, errBadLength},
		{"$-2\r\n", rpc.Server, errBadLength},
		{"$3000000\r\n", rpc.Server, rpc.ErrFrameTooLarge},
	} {
		if _, _, err := decode(t, tc.in, tc.from); !errors.Is(err, tc.want) {
			t.Errorf("%q: %v, want %v", tc.in, err, tc.want)
		}
	}
}

func TestPins(t *testing.T) {
	for in, want := range map[string]bool{
		cmd("multi"): true, cmd("WATCH", "k"): true, cmd("subscribe", "c"): true, cmd("BLPOP", "l", "0"): true,
		cmd("SELECT", "1"): true, cmd("AUTH", "pw"): true, cmd("XREAD", "BLOCK", "0", "STREAMS", "s", "$"): true,
		cmd("XREAD", "STREAMS", "block", "0"): false, cmd("GET", "k"): false, cmd("EXEC"): false,
		"MULTI\r\n": true, cmd("SET", "k", "v"): false, cmd(strings.Repeat("X", 40)): false,
	} {
		f, _, err := decode(t, in, rpc.Client)
		if err != nil {
			t.Fatal(err)
		}
		if got := (Codec{}).Pins(f); got != want {
			t.Errorf("%q: pins %v, want %v", in, got, want)
		}
	}
}

func TestBalanceKey(t *testing.T) {
	key := func(in string) (uint64, bool) {
		f, _, err := decode(t, in, rpc.Client)
		if err != nil {
			t.Fatal(err)
		}
		return Codec{}.BalanceKey(f)
	}
	a, ok1 := key(cmd("SET", "user:{42}:name", "x"))
	b, ok2 := key(cmd("GET", "user:{42}:mail"))
	c, _ := key(cmd("GET", "user:{43}:mail"))
	if !ok1 || !ok2 || a != b || a == c {
		t.Fatalf("tags: %x %x %x", a, b, c)
	}
	if _, ok := key(cmd("PING")); ok {
		t.Fatal("PING has a key")
	}
	if got := string(Codec{}.ErrorReply(nil, errors.New("bad\r\nthing"))); got != "-ERR bad  thing\r\n" {
		t.Fatalf("error reply %q", got)
	}
}

// TestRecycledFrameIsFresh: a frame taken back (rpc.Recycler) and handed
// out again by Decode carries nothing of its last message: an inline
// command or a push reply's flags do not leak into the next frame.
func TestRecycledFrameIsFresh(t *testing.T) {
	for range 10 { // sync.Pool may drop a frame: try a few
		a, _, err := decode(t, "set k v\r\n", rpc.Client)
		if err != nil || !a.inline || a.Args() != 3 {
			t.Fatalf("inline: %+v %v", a, err)
		}
		// Filled again in place, as the framework's readers do.
		reused, _, err := Codec{}.DecodeInto(a, []byte(cmd("DEL", "y", "z")), rpc.Client, testMax)
		if rf, ok := reused.(*Frame); err != nil || !ok || rf != a || rf.inline || rf.Args() != 3 || string(rf.Attr(AttrKey)) != "y" {
			t.Fatalf("decoded into a spare: %+v %v", reused, err)
		}
		if _, _, err := (Codec{}).DecodeInto(a, []byte("*2\r\n:1\r\n"), rpc.Client, testMax); err == nil || a.Args() != 3 {
			t.Fatalf("a failed decode changed the spare: %+v %v", a, err)
		}
		Codec{}.Recycle(a)
		b, _, err := decode(t, cmd("GET", "x"), rpc.Client)
		if err != nil || b.inline || b.Args() != 2 || string(b.Attr(AttrKey)) != "x" || b.Kind() != rpc.Request {
			t.Fatalf("recycled command: %+v %v", b, err)
		}
		Codec{}.Recycle(b)
		p, _, err := decode(t, ">2\r\n+message\r\n+x\r\n", rpc.Server)
		if err != nil || !p.Push() {
			t.Fatalf("push: %+v %v", p, err)
		}
		Codec{}.Recycle(p)
		r, _, err := decode(t, "+OK\r\n", rpc.Server)
		if err != nil || r.Push() || r.Kind() != rpc.Response || r.Args() != 0 {
			t.Fatalf("recycled reply: %+v %v", r, err)
		}
		Codec{}.Recycle(r)
	}
}

// BenchmarkDecode is the codec's work per pipelined command and reply on
// the hot path with a cluster that does not hash keys: frame a command,
// read its name and check whether it pins, frame its reply; into frames
// given back, as the framework's readers do (rpc.Reuser).
func BenchmarkDecode(b *testing.B) {
	req, resp := []byte(cmd("SET", "key:000000000042", "xxx")), []byte("+OK\r\n")
	b.ReportAllocs()
	var spareReq, spareResp rpc.Frame
	for b.Loop() {
		f, _, err := Codec{}.DecodeInto(spareReq, req, rpc.Client, testMax)
		if err != nil {
			b.Fatal(err)
		}
		f.Attr(AttrCommand)
		pins(f.(*Frame))
		r, _, err := Codec{}.DecodeInto(spareResp, resp, rpc.Server, testMax)
		if err != nil {
			b.Fatal(err)
		}
		spareReq, spareResp = f, r
	}
}

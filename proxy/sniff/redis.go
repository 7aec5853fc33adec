package sniff

// maxRESPCountDigits bounds the argument count of a first RESP command
// ("*<count>\r\n"): ten million arguments is beyond any real command, and
// the bound lets a run of digits fail fast.
const maxRESPCountDigits = 7

// matchRedis recognises a RESP command, an array of bulk strings:
//
//	"*" count CRLF "$" digit
//
// The count is a decimal without a leading zero (an empty "*0" command is
// never a client's first), and the first element must be a bulk string
// ("$" and the first digit of its length), which is all a client sends.
// It decides at that digit: six bytes for a one-word command. Inline
// commands ("PING\r\n") are plain text with no magic and stay Unknown.
// A first byte of "*" is a token byte, so HTTP/1 is asked first and says
// no match at the CR, where a method would need a space.
func matchRedis(b []byte) (verdict, Result) {
	switch {
	case len(b) == 0:
		return needMore, Result{}
	case b[0] != '*':
		return noMatch, Result{}
	}
	i := 1
	for i < len(b) && i <= maxRESPCountDigits+1 && '0' <= b[i] && b[i] <= '9' {
		if i == 1 && b[i] == '0' {
			return noMatch, Result{}
		}
		i++
	}
	switch {
	case i > maxRESPCountDigits+1:
		return noMatch, Result{}
	case i == len(b):
		return needMore, Result{}
	case i == 1:
		return noMatch, Result{}
	}
	const tail = "\r\n$"
	for j := 0; j < len(tail); j++ {
		switch {
		case i+j == len(b):
			return needMore, Result{}
		case b[i+j] != tail[j]:
			return noMatch, Result{}
		}
	}
	i += len(tail)
	switch {
	case i == len(b):
		return needMore, Result{}
	case b[i] < '0' || b[i] > '9':
		return noMatch, Result{}
	}
	return match, Result{}
}

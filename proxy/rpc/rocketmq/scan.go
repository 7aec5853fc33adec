package rocketmq

// scanner walks JSON text just enough to find tokens and their spans; it
// builds nothing. Strings are kept as their raw tokens (quotes included).
type scanner struct {
	b []byte
	i int
}

// maxDepth bounds nesting in skipped values.
const maxDepth = 64

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// consume skips whitespace and takes c if it is next.
func (s *scanner) consume(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// str skips whitespace and returns the next string token, quotes
// included.
func (s *scanner) str() ([]byte, bool) {
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	start := s.i
	for s.i++; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '\\':
			s.i++
		case c == '"':
			s.i++
			return s.b[start:s.i], true
		case c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// integer skips whitespace and reads an integer; start and end are its
// span.
func (s *scanner) integer() (v int64, start, end int, ok bool) {
	s.ws()
	start = s.i
	neg := false
	if s.i < len(s.b) && s.b[s.i] == '-' {
		neg = true
		s.i++
	}
	digits := 0
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		if digits > 10 {
			return 0, 0, 0, false
		}
		v = v*10 + int64(s.b[s.i]-'0')
		s.i++
		digits++
	}
	if digits == 0 {
		return 0, 0, 0, false
	}
	if neg {
		v = -v
	}
	return v, start, s.i, true
}

// literal takes word if it is next.
func (s *scanner) literal(word string) bool {
	if len(s.b)-s.i >= len(word) && string(s.b[s.i:s.i+len(word)]) == word {
		s.i += len(word)
		return true
	}
	return false
}

// skip passes over one value of any type.
func (s *scanner) skip(depth int) bool {
	if depth > maxDepth {
		return false
	}
	s.ws()
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		_, ok := s.str()
		return ok
	case c == '{' || c == '[':
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		s.i++
		if s.consume(end) {
			return true
		}
		for {
			if c == '{' {
				if _, ok := s.str(); !ok || !s.consume(':') {
					return false
				}
			}
			if !s.skip(depth + 1) {
				return false
			}
			if s.consume(end) {
				return true
			}
			if !s.consume(',') {
				return false
			}
		}
	case c == '-' || (c >= '0' && c <= '9'):
		for s.i++; s.i < len(s.b); s.i++ {
			d := s.b[s.i]
			if !(d >= '0' && d <= '9' || d == '.' || d == 'e' || d == 'E' || d == '+' || d == '-') {
				break
			}
		}
		return true
	default:
		return s.literal("true") || s.literal("false") || s.literal("null")
	}
}

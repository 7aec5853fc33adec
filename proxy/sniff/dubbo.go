package sniff

// matchDubbo recognises a Dubbo 2 request header: the magic 0xda 0xbb,
// then a flag byte with the request bit (0x80) set and a serialization id
// (its low five bits) that is not 0. It decides at the third byte: no
// other matched protocol starts with 0xda, and an opaque protocol that
// does is unlikely to follow it with 0xbb.
func matchDubbo(b []byte) (verdict, Result) {
	const magicHi, magicLo, request = 0xda, 0xbb, 0x80
	switch {
	case b[0] != magicHi:
		return noMatch, Result{}
	case len(b) < 2:
		return needMore, Result{}
	case b[1] != magicLo:
		return noMatch, Result{}
	case len(b) < 3:
		return needMore, Result{}
	case b[2]&request == 0 || b[2]&0x1f == 0:
		return noMatch, Result{}
	}
	return match, Result{}
}

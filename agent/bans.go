package agent

import (
	"encoding/binary"
	"net/netip"
)

// banVal is what the agent keeps of one ban: 16 bytes and no pointers, so that a million bans are
// a few tens of MB the garbage collector need not scan.
type banVal struct {
	rev  int64
	exp  uint32 // unix seconds; 0: never (bans are capped at a year, far inside uint32)
	meta uint32 // index into State.metaList (0: no reason or source)
}

func (v banVal) expires() int64 { return int64(v.exp) }

// key6 is an IPv6 prefix as a map key without netip's internal pointer.
type key6 struct {
	hi, lo uint64
	bits   uint8
}

// banSet holds bans by prefix: IPv4 prefixes packed into a uint64 (address and length), IPv6 ones
// into key6.
type banSet struct {
	v4 map[uint64]banVal
	v6 map[key6]banVal
}

func newBanSet(n int) banSet {
	return banSet{v4: make(map[uint64]banVal, n), v6: map[key6]banVal{}}
}

func pack4(p netip.Prefix) uint64 {
	a := p.Addr().As4()
	return uint64(binary.BigEndian.Uint32(a[:]))<<8 | uint64(p.Bits())
}

func unpack4(k uint64) netip.Prefix {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], uint32(k>>8))
	return netip.PrefixFrom(netip.AddrFrom4(a), int(k&0xff))
}

func pack6(p netip.Prefix) key6 {
	a := p.Addr().As16()
	return key6{binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:]), uint8(p.Bits())}
}

func unpack6(k key6) netip.Prefix {
	var a [16]byte
	binary.BigEndian.PutUint64(a[:8], k.hi)
	binary.BigEndian.PutUint64(a[8:], k.lo)
	return netip.PrefixFrom(netip.AddrFrom16(a), int(k.bits))
}

func (s banSet) get(p netip.Prefix) (banVal, bool) {
	if p.Addr().Is4() {
		v, ok := s.v4[pack4(p)]
		return v, ok
	}
	v, ok := s.v6[pack6(p)]
	return v, ok
}

func (s banSet) set(p netip.Prefix, v banVal) {
	if p.Addr().Is4() {
		s.v4[pack4(p)] = v
	} else {
		s.v6[pack6(p)] = v
	}
}

func (s banSet) del(p netip.Prefix) {
	if p.Addr().Is4() {
		delete(s.v4, pack4(p))
	} else {
		delete(s.v6, pack6(p))
	}
}

func (s banSet) len() int { return len(s.v4) + len(s.v6) }

// counts is the number of IPv4 and IPv6 bans.
func (s banSet) counts() [2]int { return [2]int{len(s.v4), len(s.v6)} }

// all iterates over every ban; deleting the current one while iterating is allowed.
func (s banSet) all(yield func(netip.Prefix, banVal) bool) {
	for k, v := range s.v4 {
		if !yield(unpack4(k), v) {
			return
		}
	}
	for k, v := range s.v6 {
		if !yield(unpack6(k), v) {
			return
		}
	}
}

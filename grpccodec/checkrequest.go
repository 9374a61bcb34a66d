package grpccodec

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/purser-dev/purser/internal/pbwire"
)

// A CheckRequest spends most of its decoding time in two string maps, the request headers
// and the route's context_extensions, which protobuf decodes entry by entry through
// reflection with two allocations each, and in the peers' addresses, whose oneofs protobuf
// sets through reflection too. unmarshalCheckRequest walks the path to them itself
// (CheckRequest.attributes → AttributeContext.request → Request.http → HttpRequest and
// Request.time; AttributeContext.context_extensions; AttributeContext.source and
// destination → Peer → Address → SocketAddress): it decodes HttpRequest's fields directly,
// with one allocation for all of its short strings and header keys and values, copies
// raw_body once, decodes the peers' socket addresses, principals and the request time, and
// hands every other field, unchanged and in order, to protobuf (a message may be decoded in
// parts and merged: that is protobuf's own encoding rule; an Address with a member of its
// oneof other than socket_address goes to protobuf whole, since the last member wins). The
// result equals proto.Unmarshal's, and it fails where proto.Unmarshal fails
// (TestUnmarshalCheckRequest_SameAsProtobuf, FuzzUnmarshalCheckRequest).

// Field numbers (envoy/service/auth/v3/{external_auth,attribute_context}.proto,
// envoy/config/core/v3/address.proto, google/protobuf/timestamp.proto).
const (
	fieldCheckAttributes       protowire.Number = 1  // CheckRequest.attributes
	fieldAttrSource            protowire.Number = 1  // AttributeContext.source
	fieldAttrDestination       protowire.Number = 2  // AttributeContext.destination
	fieldAttrRequest           protowire.Number = 4  // AttributeContext.request
	fieldAttrContextExtensions protowire.Number = 10 // AttributeContext.context_extensions
	fieldRequestTime           protowire.Number = 1  // AttributeContext.Request.time
	fieldRequestHTTP           protowire.Number = 2  // AttributeContext.Request.http
	// AttributeContext.Peer
	fieldPeerAddress     protowire.Number = 1
	fieldPeerService     protowire.Number = 2
	fieldPeerPrincipal   protowire.Number = 4
	fieldPeerCertificate protowire.Number = 5
	// core.v3.Address: a oneof of socket_address (1), pipe (2), envoy_internal_address (3)
	fieldAddressSocket protowire.Number = 1
	// core.v3.SocketAddress; port_value and named_port are a oneof
	fieldSocketProtocol     protowire.Number = 1
	fieldSocketAddress      protowire.Number = 2
	fieldSocketPortValue    protowire.Number = 3
	fieldSocketNamedPort    protowire.Number = 4
	fieldSocketResolverName protowire.Number = 5
	fieldSocketIPv4Compat   protowire.Number = 6
	fieldSocketNetNSPath    protowire.Number = 7
	// google.protobuf.Timestamp
	fieldTimestampSeconds protowire.Number = 1
	fieldTimestampNanos   protowire.Number = 2
	// AttributeContext.HttpRequest
	fieldHTTPID       protowire.Number = 1
	fieldHTTPMethod   protowire.Number = 2
	fieldHTTPHeaders  protowire.Number = 3
	fieldHTTPPath     protowire.Number = 4
	fieldHTTPHost     protowire.Number = 5
	fieldHTTPScheme   protowire.Number = 6
	fieldHTTPQuery    protowire.Number = 7
	fieldHTTPFragment protowire.Number = 8
	fieldHTTPSize     protowire.Number = 9
	fieldHTTPProtocol protowire.Number = 10
	fieldHTTPBody     protowire.Number = 11
	fieldHTTPRawBody  protowire.Number = 12
	fieldMapKey       protowire.Number = 1
	fieldMapValue     protowire.Number = 2
)

// httpStrings has a bit set for each short string field of HttpRequest.
const httpStrings = 1<<fieldHTTPID | 1<<fieldHTTPMethod | 1<<fieldHTTPPath | 1<<fieldHTTPHost |
	1<<fieldHTTPScheme | 1<<fieldHTTPQuery | 1<<fieldHTTPFragment | 1<<fieldHTTPProtocol

var errInvalidUTF8 = errors.New("string field contains invalid UTF-8")

func unmarshalCheckRequest(b []byte, m *authv3.CheckRequest) error {
	m.Reset()
	return decodeCheckRequest(b, m)
}

func decodeCheckRequest(b []byte, m *authv3.CheckRequest) error {
	var slab *messages
	rest, err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) (bool, error) {
		if num != fieldCheckAttributes || typ != protowire.BytesType {
			return false, nil
		}
		if m.Attributes == nil {
			slab = new(messages)
			m.Attributes = &slab.attrs
		}
		return true, decodeAttributes(v, m.Attributes, slab)
	})
	return finish(rest, err, m, 0)
}

// messages holds the messages a CheckRequest's decoding creates, so that they cost one
// allocation instead of one each (fourteen for a request with both peers' socket addresses
// and the request time). Each is handed out at most once (its taken bit); a message needed
// again, which only a request repeating a oneof member can cause, comes from the heap.
type messages struct {
	attrs   authv3.AttributeContext
	request authv3.AttributeContext_Request
	http    authv3.AttributeContext_HttpRequest
	time    timestamppb.Timestamp
	peers   [2]peerMessages // source, destination
	taken   uint8
}

// peerMessages are one Peer's messages.
type peerMessages struct {
	peer   authv3.AttributeContext_Peer
	addr   corev3.Address
	socket corev3.Address_SocketAddress
	sa     corev3.SocketAddress
	port   corev3.SocketAddress_PortValue
	taken  uint8
}

// take reports whether the message of bit is still free, and marks it taken.
func take(taken *uint8, bit uint8) bool {
	if *taken&bit != 0 {
		return false
	}
	*taken |= bit
	return true
}

const (
	takenRequest uint8 = 1 << iota
	takenHTTP
	takenTime
	takenSource
	takenDestination
)

const (
	takenPeer uint8 = 1 << iota
	takenAddress
	takenSocket
	takenPort
)

func (s *messages) newRequest() *authv3.AttributeContext_Request {
	if s == nil || !take(&s.taken, takenRequest) {
		return &authv3.AttributeContext_Request{}
	}
	return &s.request
}

func (s *messages) newHTTP() *authv3.AttributeContext_HttpRequest {
	if s == nil || !take(&s.taken, takenHTTP) {
		return &authv3.AttributeContext_HttpRequest{}
	}
	return &s.http
}

func (s *messages) newTime() *timestamppb.Timestamp {
	if s == nil || !take(&s.taken, takenTime) {
		return &timestamppb.Timestamp{}
	}
	return &s.time
}

// peer returns the slab of the source (0) or destination (1) peer, nil when none is left.
func (s *messages) peer(i int) *peerMessages {
	if s == nil || !take(&s.taken, takenSource<<i) {
		return nil
	}
	return &s.peers[i]
}

func (p *peerMessages) newPeer() *authv3.AttributeContext_Peer {
	if p == nil || !take(&p.taken, takenPeer) {
		return &authv3.AttributeContext_Peer{}
	}
	return &p.peer
}

func (p *peerMessages) newAddress() *corev3.Address {
	if p == nil || !take(&p.taken, takenAddress) {
		return &corev3.Address{}
	}
	return &p.addr
}

func (p *peerMessages) newSocket() *corev3.Address_SocketAddress {
	if p == nil || !take(&p.taken, takenSocket) {
		return &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{}}
	}
	p.socket.SocketAddress = &p.sa
	return &p.socket
}

func (p *peerMessages) newPort(v uint32) *corev3.SocketAddress_PortValue {
	if p == nil || !take(&p.taken, takenPort) {
		return &corev3.SocketAddress_PortValue{PortValue: v}
	}
	p.port.PortValue = v
	return &p.port
}

func decodeAttributes(b []byte, m *authv3.AttributeContext, slab *messages) error {
	var small [32][2][]byte
	ext := entries{kv: small[:0]}
	var src, dst *peerMessages // the peers' slabs (nil: the heap)
	rest, err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) (bool, error) {
		if typ != protowire.BytesType {
			return false, nil
		}
		switch num {
		case fieldAttrSource:
			if m.Source == nil {
				src = slab.peer(0)
				m.Source = src.newPeer()
			}
			return true, decodePeer(v, m.Source, src)
		case fieldAttrDestination:
			if m.Destination == nil {
				dst = slab.peer(1)
				m.Destination = dst.newPeer()
			}
			return true, decodePeer(v, m.Destination, dst)
		case fieldAttrRequest:
			if m.Request == nil {
				m.Request = slab.newRequest()
			}
			return true, decodeRequest(v, m.Request, slab)
		case fieldAttrContextExtensions:
			kv, err := readEntry(v)
			if err != nil {
				return false, err
			}
			ext = ext.add(kv)
			return true, nil
		}
		return false, nil
	})
	if err == nil {
		m.ContextExtensions = ext.insert(m.ContextExtensions, ext.build(nil, 0))
	}
	return finish(rest, err, m, 1)
}

func decodeRequest(b []byte, m *authv3.AttributeContext_Request, slab *messages) error {
	rest, err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) (bool, error) {
		if typ != protowire.BytesType {
			return false, nil
		}
		switch num {
		case fieldRequestHTTP:
			if m.Http == nil {
				m.Http = slab.newHTTP()
			}
			return true, decodeHTTP(v, m.Http)
		case fieldRequestTime:
			if m.Time == nil {
				m.Time = slab.newTime()
			}
			return true, decodeTimestamp(v, m.Time)
		}
		return false, nil
	})
	return finish(rest, err, m, 2)
}

func decodeTimestamp(b []byte, m *timestamppb.Timestamp) error {
	rest, err := walk(b, func(num protowire.Number, typ protowire.Type, _ []byte, x uint64) (bool, error) {
		if typ != protowire.VarintType {
			return false, nil
		}
		switch num {
		case fieldTimestampSeconds:
			m.Seconds = int64(x)
		case fieldTimestampNanos:
			m.Nanos = int32(x) // protobuf truncates an int32 varint the same way
		default:
			return false, nil
		}
		return true, nil
	})
	return finish(rest, err, m, 3)
}

// decodePeer decodes a Peer's address and short strings; its labels, and anything
// unexpected, go to protobuf.
func decodePeer(b []byte, m *authv3.AttributeContext_Peer, slab *peerMessages) error {
	rest, err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) (bool, error) {
		if typ != protowire.BytesType {
			return false, nil
		}
		var dst *string
		switch num {
		case fieldPeerAddress:
			if m.Address == nil {
				m.Address = slab.newAddress()
			}
			return true, decodeAddress(v, m.Address, slab)
		case fieldPeerService:
			dst = &m.Service
		case fieldPeerPrincipal:
			dst = &m.Principal
		case fieldPeerCertificate:
			dst = &m.Certificate
		default:
			return false, nil
		}
		return true, setString(dst, v)
	})
	return finish(rest, err, m, 2)
}

// decodeAddress decodes an Address holding a socket address. The order of a oneof's members
// on the wire decides which one stays, so an Address with any other member (or a member of
// the wrong wire type) goes to protobuf whole.
func decodeAddress(b []byte, m *corev3.Address, slab *peerMessages) error {
	if !onlySocket(b) {
		return proto.UnmarshalOptions{Merge: true, RecursionLimit: protowire.DefaultRecursionLimit - 3}.Unmarshal(b, m)
	}
	rest, err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) (bool, error) {
		if num != fieldAddressSocket {
			return false, nil // unknown fields, kept by protobuf
		}
		sa, ok := m.Address.(*corev3.Address_SocketAddress)
		if !ok || sa.SocketAddress == nil {
			sa = slab.newSocket()
			m.Address = sa
		}
		return true, decodeSocketAddress(v, sa.SocketAddress, slab)
	})
	return finish(rest, err, m, 3)
}

// decodeSocketAddress decodes a SocketAddress. Both members of its port oneof are decoded
// here, in wire order, so the last one stays as with protobuf.
func decodeSocketAddress(b []byte, m *corev3.SocketAddress, slab *peerMessages) error {
	rest, err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) (bool, error) {
		if typ == protowire.VarintType {
			switch num {
			case fieldSocketProtocol:
				m.Protocol = corev3.SocketAddress_Protocol(int32(x))
			case fieldSocketPortValue:
				m.PortSpecifier = slab.newPort(uint32(x))
			case fieldSocketIPv4Compat:
				m.Ipv4Compat = x != 0
			default:
				return false, nil
			}
			return true, nil
		}
		var dst *string
		switch num {
		case fieldSocketAddress:
			dst = &m.Address
		case fieldSocketResolverName:
			dst = &m.ResolverName
		case fieldSocketNetNSPath:
			dst = &m.NetworkNamespaceFilepath
		case fieldSocketNamedPort:
			np, ok := m.PortSpecifier.(*corev3.SocketAddress_NamedPort)
			if !ok {
				np = &corev3.SocketAddress_NamedPort{}
				m.PortSpecifier = np
			}
			dst = &np.NamedPort
		default:
			return false, nil
		}
		return true, setString(dst, v)
	})
	return finish(rest, err, m, 4)
}

// setString stores a string field's value, which protobuf requires to be valid UTF-8.
func setString(dst *string, v []byte) error {
	if !utf8.Valid(v) {
		return errInvalidUTF8
	}
	*dst = string(v)
	return nil
}

// onlySocket reports whether the only member of an Address's oneof (fields 1 to 3) in b is a
// well-typed socket_address, however often; a malformed b answers false.
func onlySocket(b []byte) bool {
	for len(b) > 0 {
		f, rest, err := pbwire.Next(b)
		if err != nil {
			return false
		}
		if f.Num >= 1 && f.Num <= 3 && (f.Num != fieldAddressSocket || f.Type != protowire.BytesType) {
			return false
		}
		b = rest
	}
	return true
}

// decodeHTTP decodes an HttpRequest entirely, bar unknown fields and fields of an
// unexpected wire type (protobuf's then).
func decodeHTTP(b []byte, m *authv3.AttributeContext_HttpRequest) error {
	var small [32][2][]byte
	headers := entries{kv: small[:0]}
	var strs [fieldHTTPRawBody][]byte // by field number: the string fields seen, last wins
	var seen uint16
	rest, err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) (bool, error) {
		if num == fieldHTTPSize {
			if typ != protowire.VarintType {
				return false, nil
			}
			m.Size = int64(x)
			return true, nil
		}
		if typ != protowire.BytesType {
			return false, nil
		}
		switch num {
		case fieldHTTPHeaders:
			kv, err := readEntry(v)
			if err != nil {
				return false, err
			}
			headers = headers.add(kv)
			return true, nil
		case fieldHTTPRawBody:
			m.RawBody = append(make([]byte, 0, len(v)), v...)
			return true, nil
		case fieldHTTPBody:
			if !utf8.Valid(v) {
				return false, errInvalidUTF8
			}
			m.Body = string(v) // on its own: the header strings must not pin a body
			return true, nil
		}
		if num < 1 || int(num) >= len(strs) || httpStrings&(1<<num) == 0 {
			return false, nil
		}
		if !utf8.Valid(v) {
			return false, errInvalidUTF8
		}
		strs[num] = v
		seen |= 1 << num
		return true, nil
	})
	if err != nil {
		return err
	}
	for num, v := range strs {
		if seen&(1<<num) != 0 {
			headers.bytes += len(v)
		}
	}
	all := headers.build(strs[:], seen)
	for num := range strs {
		if seen&(1<<num) == 0 {
			continue
		}
		n := len(strs[num])
		v := all[:n]
		all = all[n:]
		switch protowire.Number(num) {
		case fieldHTTPID:
			m.Id = v
		case fieldHTTPMethod:
			m.Method = v
		case fieldHTTPPath:
			m.Path = v
		case fieldHTTPHost:
			m.Host = v
		case fieldHTTPScheme:
			m.Scheme = v
		case fieldHTTPQuery:
			m.Query = v
		case fieldHTTPFragment:
			m.Fragment = v
		case fieldHTTPProtocol:
			m.Protocol = v
		}
	}
	m.Headers = headers.insert(m.Headers, all)
	return finish(rest, nil, m, 3)
}

// walk hands each length-delimited or varint field of b to take (v: the bytes, or x: the
// varint), in order; it returns the fields take declined, and every field of another wire
// type, as they were, for protobuf to decode. Malformed wire data fails (pbwire).
func walk(b []byte, take func(num protowire.Number, typ protowire.Type, v []byte, x uint64) (bool, error)) (rest []byte, err error) {
	for len(b) > 0 {
		f, next, err := pbwire.Next(b)
		if err != nil {
			return nil, err
		}
		b = next
		if f.Type == protowire.BytesType || f.Type == protowire.VarintType {
			taken, err := take(f.Num, f.Type, f.Bytes, f.Scalar)
			if err != nil {
				return nil, err
			}
			if taken {
				continue
			}
		}
		rest = append(rest, f.Raw...)
	}
	return rest, nil
}

// finish decodes rest into m once the walk succeeded. depth is m's nesting below the
// CheckRequest: protobuf would have entered m with that many levels of its recursion limit
// already spent, so rest gets that much less.
func finish(rest []byte, err error, m proto.Message, depth int) error {
	if err != nil || len(rest) == 0 {
		return err
	}
	return proto.UnmarshalOptions{Merge: true, RecursionLimit: protowire.DefaultRecursionLimit - depth}.Unmarshal(rest, m)
}

// entries gathers the entries of a map<string, string> field in wire order. Its callers
// start kv on an array on their stack: an array inside entries, or a store through a pointer
// to it, moved it to the heap (3 KB for each HttpRequest and AttributeContext on the wire,
// which a hostile message can repeat every few bytes).
type entries struct {
	kv    [][2][]byte // aliases the wire buffer until insert
	bytes int
}

// add returns e with one more entry, as readEntry read it. It takes and returns e by value:
// a store through a pointer would move the caller's array to the heap.
func (e entries) add(kv [2][]byte) entries {
	e.kv = append(e.kv, kv)
	e.bytes += len(kv[0]) + len(kv[1])
	return e
}

// readEntry reads one map entry message: key 1, value 2, both strings (missing: ""); a
// repeated field's last occurrence wins and other fields are skipped, as protobuf does.
func readEntry(b []byte) (kv [2][]byte, err error) {
	for len(b) > 0 {
		f, rest, err := pbwire.Next(b)
		if err != nil {
			return kv, fmt.Errorf("map entry: %w", err)
		}
		b = rest
		if (f.Num == fieldMapKey || f.Num == fieldMapValue) && f.Type == protowire.BytesType {
			if !utf8.Valid(f.Bytes) {
				return kv, fmt.Errorf("map entry: %w", errInvalidUTF8)
			}
			kv[f.Num-1] = f.Bytes
		}
	}
	return kv, nil
}

// build writes the strings extra[i] (those with bit i of seen set) and then every key and
// value into one string, so that all of them cost one allocation, not one each.
func (e *entries) build(extra [][]byte, seen uint16) string {
	if e.bytes == 0 {
		return ""
	}
	var sb strings.Builder
	sb.Grow(e.bytes)
	for i, v := range extra {
		if seen&(1<<i) != 0 {
			sb.Write(v)
		}
	}
	for _, kv := range e.kv {
		sb.Write(kv[0])
		sb.Write(kv[1])
	}
	return sb.String()
}

// insert adds the entries to m (created when nil and there are entries), later entries
// overwriting earlier ones, their keys and values cut from all (build's result past the
// extra strings).
func (e *entries) insert(m map[string]string, all string) map[string]string {
	if len(e.kv) == 0 {
		return m
	}
	if m == nil {
		m = make(map[string]string, len(e.kv))
	}
	for _, kv := range e.kv {
		k := all[:len(kv[0])]
		all = all[len(kv[0]):]
		m[k] = all[:len(kv[1])]
		all = all[len(kv[1]):]
	}
	return m
}

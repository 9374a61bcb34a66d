package accesslog

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"unicode/utf8"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/internal/pbwire"
)

// The sink reads StreamAccessLogsMessages straight from the wire. protobuf's decoder built
// every entry whole — both addresses, nine durations, every metadata namespace as a Struct of
// Values — about 150 allocations and 11 µs an entry, more than half of the sink's CPU, for
// the twenty-odd fields Extract reads. decodeMessage walks the wire to those fields and skips
// the rest unread, with protobuf's rules where they matter (a repeated message field merges,
// a map's last entry for a key wins, a field of an unexpected wire type is an unknown field),
// so that its entries equal Extract's over proto.Unmarshal (TestDecodeEntry_SameAsExtract,
// FuzzDecodeEntry).
//
// Unlike proto.Unmarshal it does not reject a message for invalid UTF-8 in a string field:
// Envoy copies request paths and user agents into entries as the client sent them, and one
// such entry would otherwise cost every other entry of its message (and break the stream).
// The strings it keeps are made valid (text): they go to Postgres, which rejects invalid
// text, and would fail a whole batch of settlements or unreserved records; input protobuf
// accepts is valid already, so that changes nothing there. Malformed wire structure is still
// an error.

// Field numbers (envoy/service/accesslog/v3/als.proto, envoy/data/accesslog/v3/accesslog.proto,
// envoy/config/core/v3/base.proto, google/protobuf/{struct,timestamp,duration,wrappers}.proto).
const (
	fieldMsgIdentifier protowire.Number = 1 // StreamAccessLogsMessage
	fieldMsgHTTPLogs   protowire.Number = 2
	fieldMsgTCPLogs    protowire.Number = 3
	fieldLogsEntry     protowire.Number = 1 // HTTPAccessLogEntries, TCPAccessLogEntries

	fieldEntryCommon   protowire.Number = 1 // HTTPAccessLogEntry
	fieldEntryRequest  protowire.Number = 3
	fieldEntryResponse protowire.Number = 4

	fieldCommonStartTime    protowire.Number = 5 // AccessLogCommon
	fieldCommonUpstreamTx   protowire.Number = 7 // time_to_first_upstream_tx_byte
	fieldCommonUpstreamRx   protowire.Number = 9 // time_to_first_upstream_rx_byte
	fieldCommonFlags        protowire.Number = 16
	fieldCommonMetadata     protowire.Number = 17
	fieldCommonRouteName    protowire.Number = 19
	fieldCommonDuration     protowire.Number = 23
	fieldCommonIntermediate protowire.Number = 27
	fieldCommonLogType      protowire.Number = 33

	fieldRequestID        protowire.Number = 9 // HTTPRequestProperties.request_id
	fieldResponseCode     protowire.Number = 1 // HTTPResponseProperties
	fieldResponseHeaders  protowire.Number = 4
	fieldResponseTrailers protowire.Number = 5
	fieldResponseDetails  protowire.Number = 6

	fieldMetadataFilter protowire.Number = 1 // Metadata.filter_metadata
	fieldMetadataTyped  protowire.Number = 2 // Metadata.typed_filter_metadata
	fieldStructFields   protowire.Number = 1 // Struct.fields
	fieldMapKey         protowire.Number = 1
	fieldMapValue       protowire.Number = 2

	// Value's kind oneof.
	fieldValueNull   protowire.Number = 1
	fieldValueNumber protowire.Number = 2
	fieldValueString protowire.Number = 3
	fieldValueBool   protowire.Number = 4
)

// message is one StreamAccessLogsMessage as the sink needs it.
type message struct {
	identifier *alsv3.StreamAccessLogsMessage_Identifier // nil unless the message carries one
	http       []Entry                                   // the HTTP entries, decoded
	tcp        bool                                      // the message carries TCP entries (ignored) ...
	tcpEntries int                                       // ... this many
}

// decodeMessage reads one StreamAccessLogsMessage; conf has its defaults applied.
func decodeMessage(b []byte, conf *ExtractConfig) (message, error) {
	var m message
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldMsgIdentifier:
			if m.identifier == nil {
				m.identifier = &alsv3.StreamAccessLogsMessage_Identifier{}
			}
			return proto.UnmarshalOptions{Merge: true}.Unmarshal(v, m.identifier)
		case fieldMsgHTTPLogs: // one of http_logs, tcp_logs: the last one set wins
			m.tcp, m.tcpEntries = false, 0
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if num != fieldLogsEntry || typ != protowire.BytesType {
					return nil
				}
				e, err := decodeEntry(v, conf)
				if err != nil {
					return err
				}
				m.http = append(m.http, e)
				return nil
			})
		case fieldMsgTCPLogs:
			m.http, m.tcp = nil, true
			return fields(v, func(num protowire.Number, typ protowire.Type, _ []byte, _ uint64) error {
				if num == fieldLogsEntry && typ == protowire.BytesType {
					m.tcpEntries++
				}
				return nil
			})
		}
		return nil
	})
	return m, err
}

// wireMessage receives one StreamAccessLogsMessage. purser's codec (grpccodec) hands it the
// message's bytes (UnmarshalBinary). A server with the stock protobuf codec cannot: the sink
// would lose every entry if wireMessage were not also a proto.Message, one that keeps every
// field unknown (emptypb.Empty), so that protobuf checks the wire format and keeps the
// message's bytes, which the sink then decodes (Sink.decodeFallback) and warns once about the
// missing codec.
type wireMessage struct {
	conf    *ExtractConfig
	m       message
	decoded bool          // UnmarshalBinary ran
	raw     emptypb.Empty // the stock codec's target: all of the message in its unknown fields
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler.
func (w *wireMessage) UnmarshalBinary(b []byte) error {
	m, err := decodeMessage(b, w.conf)
	if err != nil {
		return fmt.Errorf("access-log message: %w", err)
	}
	w.m, w.decoded = m, true
	return nil
}

// ProtoReflect makes wireMessage a proto.Message for the stock codec: it decodes into raw.
func (w *wireMessage) ProtoReflect() protoreflect.Message { return w.raw.ProtoReflect() }

// decodeFallback decodes a message that the stock protobuf codec received into w.raw, and
// warns, once per sink, that the server lacks purser's codec.
func (s *Sink) decodeFallback(ctx context.Context, w *wireMessage) error {
	s.noCodec.Do(func() {
		s.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "access-log sink served without purser's gRPC codec: "+
			"every message is decoded twice; create the server with grpccodec.ServerOption")
	})
	if err := w.UnmarshalBinary(w.raw.ProtoReflect().GetUnknown()); err != nil {
		return status.Errorf(codes.Internal, "grpc: failed to unmarshal the received message: %v", err)
	}
	return nil
}

// entryWire is what decodeEntry gathers before it builds the Entry: the common parts, and the
// metadata and headers as wire bytes (they alias the message until decodeEntry returns).
type entryWire struct {
	common
	nsArray                [4][]byte
	namespaces             [][]byte // conf.wireNamespaces[i]'s last filter_metadata entry
	typed                  []byte   // the TokenUsage namespace's last typed_filter_metadata entry
	headerVals, trailerVal [][]byte // per conf.headerNames: the last value logged, nil if none
	contentType, encoding  []byte   // the response's content-type and content-encoding, if logged
}

// decodeEntry reads one HTTPAccessLogEntry as Extract would.
func decodeEntry(b []byte, conf *ExtractConfig) (Entry, error) {
	var w entryWire
	if n := len(conf.wireNamespaces); n <= len(w.nsArray) {
		w.namespaces = w.nsArray[:n]
	} else {
		w.namespaces = make([][]byte, n)
	}
	if n := len(conf.headerNames); n > 0 {
		w.headerVals, w.trailerVal = make([][]byte, n), make([][]byte, n)
	}
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldEntryCommon:
			return w.readCommon(v, conf)
		case fieldEntryRequest:
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if num == fieldRequestID && typ == protowire.BytesType {
					w.requestID = text(v)
				}
				return nil
			})
		case fieldEntryResponse:
			return w.readResponse(v, conf)
		}
		return nil
	})
	if err != nil {
		return Entry{}, err
	}
	out := w.entry()
	out.ContentType, out.ContentEncoding = text(w.contentType), text(w.encoding)
	return out, w.readMetadata(&out, conf)
}

func (w *entryWire) readCommon(b []byte, conf *ExtractConfig) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		if typ == protowire.VarintType {
			switch num {
			case fieldCommonIntermediate:
				w.intermediate = protowire.DecodeBool(x)
			case fieldCommonLogType:
				w.typ = alsdata.AccessLogType(int32(x))
			}
			return nil
		}
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldCommonStartTime:
			w.hasStart = true
			return secondsNanos(v, &w.startSeconds, &w.startNanos)
		case fieldCommonDuration:
			w.hasDuration = true
			return secondsNanos(v, &w.durSeconds, &w.durNanos)
		case fieldCommonUpstreamTx:
			w.sent = true
		case fieldCommonUpstreamRx:
			w.answered = true
		case fieldCommonFlags:
			return fields(v, func(num protowire.Number, typ protowire.Type, _ []byte, x uint64) error {
				if typ == protowire.VarintType && num < 64 {
					if protowire.DecodeBool(x) {
						w.flags |= 1 << num
					} else {
						w.flags &^= 1 << num
					}
				}
				return nil
			})
		case fieldCommonRouteName:
			w.route = text(v)
		case fieldCommonMetadata:
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if typ != protowire.BytesType || (num != fieldMetadataFilter && num != fieldMetadataTyped) {
					return nil
				}
				key, err := mapKey(v)
				if err != nil {
					return err
				}
				if num == fieldMetadataTyped {
					if conf.TokenUsageNamespace != "-" && string(key) == conf.TokenUsageNamespace {
						w.typed = v
					}
					return nil
				}
				for i, ns := range conf.wireNamespaces {
					if string(key) == ns {
						w.namespaces[i] = v
					}
				}
				return nil
			})
		}
		return nil
	})
}

func (w *entryWire) readResponse(b []byte, conf *ExtractConfig) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldResponseCode:
			w.hasCode = true
			return fields(v, func(num protowire.Number, typ protowire.Type, _ []byte, x uint64) error {
				if num == 1 && typ == protowire.VarintType {
					w.code = uint32(x)
				}
				return nil
			})
		case fieldResponseDetails:
			w.details = text(v)
		case fieldResponseHeaders, fieldResponseTrailers:
			key, err := mapKey(v)
			if err != nil {
				return err
			}
			if num == fieldResponseHeaders {
				switch string(key) {
				case "content-type":
					if w.contentType, err = mapStringValue(v); err != nil {
						return err
					}
				case "content-encoding":
					if w.encoding, err = mapStringValue(v); err != nil {
						return err
					}
				}
			}
			if len(conf.headerNames) == 0 {
				return nil
			}
			vals := w.headerVals
			if num == fieldResponseTrailers {
				vals = w.trailerVal
			}
			for i, h := range conf.headerNames {
				if string(key) == h {
					val, err := mapStringValue(v)
					if err != nil {
						return err
					}
					vals[i] = val
				}
			}
		}
		return nil
	})
}

// readMetadata reads the namespaces gathered, as Extract reads them from a decoded entry.
func (w *entryWire) readMetadata(out *Entry, conf *ExtractConfig) error {
	ns := func(name string) []byte {
		for i, n := range conf.wireNamespaces {
			if n == name {
				return w.namespaces[i]
			}
		}
		return nil
	}
	if az := ns(ExtAuthzNamespace); az != nil {
		if err := structFields(az, func(key []byte, v value) error {
			out.authzField(string(key), v.str)
			return nil
		}); err != nil {
			return err
		}
	}
	var flat map[string]any
	for _, name := range conf.UsageNamespaces {
		u := ns(name)
		if u == nil {
			continue
		}
		if err := structFields(u, func(key []byte, v value) error {
			x, err := v.any()
			if err != nil {
				return err
			}
			flat = out.usageField(flat, text(key), x)
			return nil
		}); err != nil {
			return err
		}
	}
	out.finishUsage(flat, conf, func(h string) (string, bool) {
		for i, n := range conf.headerNames {
			if n != h {
				continue
			}
			if v := w.trailerVal[i]; v != nil {
				return text(v), true
			}
			if v := w.headerVals[i]; v != nil {
				return text(v), true
			}
		}
		return "", false
	})
	if conf.AIGatewayNamespace != "-" {
		if b := ns(conf.AIGatewayNamespace); b != nil {
			var s structpb.Struct
			if err := mapMessageValue(b, &s); err != nil {
				return err
			}
			out.Tokens = aiGatewayTokens(&s, &conf.AIGatewayKeys)
		}
	}
	if w.typed != nil {
		var a anypb.Any
		if err := mapMessageValue(w.typed, &a); err != nil {
			return err
		}
		out.typedUsage(&a)
	}
	return nil
}

// value is one Struct value as the sink reads it: a scalar's value, or (nested) the Struct's
// map entry holding it, for protobuf to decode the Value from every occurrence of the entry's
// value field, in order.
type value struct {
	str    string
	entry  []byte // the Struct's map entry
	kind   protowire.Number
	number float64
	flag   bool
	nested bool // a struct or list value: decoded by protobuf
}

// any is the value as structpb.Value.AsInterface returns it.
func (v value) any() (any, error) {
	if v.nested {
		var pv structpb.Value
		if err := mapMessageValue(v.entry, &pv); err != nil {
			return nil, err
		}
		return pv.AsInterface(), nil
	}
	switch v.kind {
	case fieldValueNumber: // as AsInterface: JSON has no NaN or infinities
		switch {
		case math.IsNaN(v.number):
			return "NaN", nil
		case math.IsInf(v.number, 1):
			return "Infinity", nil
		case math.IsInf(v.number, -1):
			return "-Infinity", nil
		}
		return v.number, nil
	case fieldValueString:
		return v.str, nil
	case fieldValueBool:
		return v.flag, nil
	}
	return nil, nil
}

// structFields calls fn for each field of the Struct held by a map entry, the last entry for
// a key winning (a map's rule), the Struct merged from every occurrence of the entry's value.
func structFields(entry []byte, fn func(key []byte, v value) error) error {
	var small [16]struct {
		key   []byte
		entry []byte
	}
	seen := small[:0]
	var index map[string]int // past len(small) keys: a scan per key would be quadratic
	err := mapValues(entry, func(s []byte) error {
		return fields(s, func(num protowire.Number, typ protowire.Type, f []byte, _ uint64) error {
			if num != fieldStructFields || typ != protowire.BytesType {
				return nil
			}
			key, err := mapKey(f)
			if err != nil {
				return err
			}
			if index != nil {
				if i, ok := index[string(key)]; ok {
					seen[i].entry = f
					return nil
				}
				index[string(key)] = len(seen)
			} else {
				for i := range seen {
					if string(seen[i].key) == string(key) {
						seen[i].entry = f
						return nil
					}
				}
				if len(seen) == len(small) {
					index = make(map[string]int, 2*len(small))
					for i, kv := range seen {
						index[string(kv.key)] = i
					}
					index[string(key)] = len(seen)
				}
			}
			seen = append(seen, struct{ key, entry []byte }{key, f})
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, kv := range seen {
		v, err := readValue(kv.entry)
		if err != nil {
			return err
		}
		if err := fn(kv.key, v); err != nil {
			return err
		}
	}
	return nil
}

// readValue reads the Value of a Struct's map entry: its kind is the last one set.
func readValue(entry []byte) (value, error) {
	v := value{entry: entry}
	err := mapValues(entry, func(b []byte) error {
		return fields(b, func(num protowire.Number, typ protowire.Type, s []byte, x uint64) error {
			switch {
			case num == fieldValueNull && typ == protowire.VarintType:
				v.kind, v.nested = num, false
			case num == fieldValueNumber && typ == protowire.Fixed64Type:
				v.kind, v.nested, v.number = num, false, math.Float64frombits(x)
			case num == fieldValueString && typ == protowire.BytesType:
				v.kind, v.nested, v.str = num, false, text(s)
			case num == fieldValueBool && typ == protowire.VarintType:
				v.kind, v.nested, v.flag = num, false, protowire.DecodeBool(x)
			case (num == 5 || num == 6) && typ == protowire.BytesType: // struct_value, list_value
				v.kind, v.nested = num, true
			}
			return nil
		})
	})
	if v.kind != fieldValueString {
		v.str = ""
	}
	return v, err
}

// text is b as a string, made valid UTF-8 (each invalid byte sequence becomes U+FFFD).
func text(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// mapKey returns a map entry's key (the last occurrence; empty when absent).
func mapKey(entry []byte) ([]byte, error) {
	var key []byte
	err := fields(entry, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if num == fieldMapKey && typ == protowire.BytesType {
			key = v
		}
		return nil
	})
	return key, err
}

// mapStringValue returns a map<string, string> entry's value (the last occurrence; empty
// when absent).
func mapStringValue(entry []byte) ([]byte, error) {
	val := []byte{}
	err := mapValues(entry, func(v []byte) error { val = v; return nil })
	return val, err
}

// mapValues calls fn with each occurrence of a map entry's value field, in order: a message
// value is the merge of them all.
func mapValues(entry []byte, fn func(v []byte) error) error {
	return fields(entry, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if num == fieldMapValue && typ == protowire.BytesType {
			return fn(v)
		}
		return nil
	})
}

// mapMessageValue decodes a map entry's message value with protobuf (the rare namespaces:
// AI Gateway's, the typed TokenUsage, nested Struct values).
func mapMessageValue(entry []byte, m proto.Message) error {
	return mapValues(entry, func(v []byte) error {
		return proto.UnmarshalOptions{Merge: true}.Unmarshal(v, m)
	})
}

// secondsNanos merges a Timestamp or Duration into seconds and nanos.
func secondsNanos(b []byte, seconds *int64, nanos *int32) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, _ []byte, x uint64) error {
		if typ != protowire.VarintType {
			return nil
		}
		switch num {
		case 1:
			*seconds = int64(x)
		case 2:
			*nanos = int32(x)
		}
		return nil
	})
}

// fields calls fn with each field of b in order: v for a length-delimited field, x for a
// varint or a fixed64; any other wire type is skipped. It fails on malformed wire data, as
// protobuf does (pbwire).
func fields(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		f, rest, err := pbwire.Next(b)
		if err != nil {
			return err
		}
		b = rest
		if f.Type != protowire.BytesType && f.Type != protowire.VarintType && f.Type != protowire.Fixed64Type {
			continue
		}
		if err := fn(f.Num, f.Type, f.Bytes, f.Scalar); err != nil {
			return err
		}
	}
	return nil
}

package envoysim

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// CheckFault makes Envoy's side of one Check misbehave (Sim.SetCheckFault).
type CheckFault struct {
	// TimeoutAfter > 0: Envoy's timer fires after this long, although the grpc-timeout it
	// sent is the configured timeout (an answer delayed past Envoy's deadline by the network
	// or a stalled worker). Like Envoy on its timeout, the call is cancelled and the error
	// path applies (failure_mode_allow / status_on_error; reference 1.1, 3.1, 8.2).
	TimeoutAfter time.Duration
	// LoseAnswer: the Check runs to completion on the server (its hold may commit) but the
	// answer arrives after Envoy gave up: Envoy treats it as a timeout (reference 8.3, ghost
	// reservations).
	LoseAnswer bool
}

// SetCheckFault installs f, called with each downstream request before its Check (nil
// removes it).
func (s *Sim) SetCheckFault(f func(*http.Request) CheckFault) {
	if f == nil {
		s.checkFault.Store(nil)
		return
	}
	s.checkFault.Store(&f)
}

// extAuthz runs the ext_authz decode path (reference 1.2, 1.3, 3). It returns the request
// body (buffered part plus the unread rest) and whether the request continues.
func (st *stream) extAuthz(az *ExtAuthzConfig) (*bodyReader, bool) {
	settings := az.Body
	if st.route.body != nil {
		settings = st.route.body
	}
	if st.route.noBodyBuffering {
		settings = nil
	}
	r := st.r
	headersOnly := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	var body *bodyReader
	var checkBody []byte
	partial := false
	buffered := false
	if settings != nil && !headersOnly {
		// Buffer up to max_request_bytes; the Check starts at the end of the body or, with
		// allow_partial_message, as soon as the buffered data reaches max_request_bytes
		// (reference 1.2; source/extensions/filters/http/ext_authz/ext_authz.cc, decodeData and
		// isBufferFull). The buffer is whole chunks as they arrived, so it may hold more than
		// the limit, or exactly the limit with more still to come.
		limit := int64(settings.GetMaxRequestBytes())
		buf, eof, err := bufferBody(r.Body, limit, settings.GetAllowPartialMessage())
		st.reqBodyBytes = int64(len(buf))
		if err != nil {
			st.downstreamGone()
			return nil, false
		}
		full := !eof
		if full && !settings.GetAllowPartialMessage() {
			// The decoder buffer limit is raised to max_request_bytes; a larger body is a 413
			// and no Check, failure_mode_allow notwithstanding (reference 1.3).
			st.localReply(http.StatusRequestEntityTooLarge, "Payload Too Large", nil, "request_payload_too_large")
			return nil, false
		}
		if settings.GetAllowPartialMessage() && limit > int64(st.s.cfg.BufferLimit) && int64(len(buf)) > int64(st.s.cfg.BufferLimit) {
			// max_request_bytes above per_connection_buffer_limit_bytes: the connection's
			// buffer overflows first, a 413 even in partial mode (reference 1.3, 8.5).
			st.localReply(http.StatusRequestEntityTooLarge, "Payload Too Large", nil, "request_payload_too_large")
			return nil, false
		}
		body = &bodyReader{buffered: buf, contentLength: r.ContentLength}
		if full {
			body.rest = r.Body
		} else {
			st.tLastRx = st.since()
		}
		checkBody = buf[:min(int64(len(buf)), limit)]
		// check_request_utils.cc (setRequestBody): partial = length sent != length buffered.
		// A chunk that ends exactly on max_request_bytes makes it "false" although the rest of
		// the body has not arrived; purser must not take "false" for complete.
		partial = len(checkBody) != len(buf)
		buffered = true
	}
	req := st.checkRequest(az, settings, checkBody, buffered, partial)

	h := st.s.hosts[az.Cluster].pick()
	h.active.Add(1)
	h.checks.Add(1)
	st.s.count(func(x *Stats) { x.Checks++ })
	parent := r.Context() // the client going away cancels the Check (onDestroy, reference 1.2)
	var ctx context.Context
	var cancel context.CancelFunc
	if az.Timeout > 0 { // 0s means no timeout since 1.38 (reference 1.1)
		ctx, cancel = context.WithTimeout(parent, az.Timeout) // sent as grpc-timeout
	} else {
		ctx, cancel = context.WithCancel(parent)
	}
	defer cancel()
	ctx = metadata.NewOutgoingContext(ctx, initialMetadata(az.InitialMetadata)) // e.g. x-purser-secret
	var fault CheckFault
	if f := st.s.checkFault.Load(); f != nil {
		fault = (*f)(r)
	}
	type result struct {
		resp *authv3.CheckResponse
		err  error
	}
	start := time.Now()
	done := make(chan result, 1)
	go func() {
		resp, err := authv3.NewAuthorizationClient(h.conn).Check(ctx, req)
		done <- result{resp, err}
	}()
	var res result
	if fault.TimeoutAfter > 0 {
		t := time.NewTimer(fault.TimeoutAfter)
		select {
		case res = <-done:
		case <-t.C:
			cancel() // Envoy resets the call on its timeout
			<-done
			res = result{err: errCheckTimeout}
		}
		t.Stop()
	} else {
		res = <-done
	}
	if fault.LoseAnswer && res.err == nil {
		res = result{err: errCheckTimeout}
	}
	h.active.Add(-1)
	if r.Context().Err() != nil {
		st.downstreamGone() // the Check was cancelled with the stream: no response at all
		return nil, false
	}
	if res.err != nil {
		st.s.count(func(x *Stats) { x.CheckError++ })
		return body, st.authzError(az, nil)
	}
	resp := res.resp
	ok := resp.GetStatus().GetCode() == int32(code.Code_OK)
	// Dynamic metadata is stored for OK and denied answers alike, when non-empty and
	// ingestion is enabled; the deprecated OkHttpResponse.dynamic_metadata overrides the
	// top-level field; OK answers get ext_authz_duration (reference 3.2, 3.4).
	md := resp.GetDynamicMetadata()
	//lint:ignore SA1019 Envoy still honours the deprecated field, so the simulator does
	if okr := resp.GetOkResponse(); okr != nil && okr.GetDynamicMetadata() != nil {
		md = okr.GetDynamicMetadata() //lint:ignore SA1019 as above
	}
	if len(md.GetFields()) > 0 && az.IngestDynamicMetadata {
		md = proto.Clone(md).(*structpb.Struct)
		if ok {
			md.Fields[ExtAuthzDurationKey] = structpb.NewNumberValue(float64(time.Since(start).Milliseconds()))
		}
		for k, v := range md.GetFields() {
			st.setMetadata(ExtAuthzNamespace, k, v, false)
		}
	}
	switch {
	case ok:
		okr := resp.GetOkResponse()
		for _, o := range okr.GetHeaders() {
			applyHeaderOption(st.hdr, o)
		}
		for _, k := range okr.GetHeadersToRemove() {
			if strings.HasPrefix(k, ":") || strings.EqualFold(k, "host") {
				continue // pseudo-headers and Host are never removed
			}
			st.hdr.Del(k)
		}
		set := map[string]string{}
		for _, q := range okr.GetQueryParametersToSet() {
			set[q.GetKey()] = q.GetValue()
		}
		st.path = withQuery(st.path, set, okr.GetQueryParametersToRemove())
		st.respToAdd = okr.GetResponseHeadersToAdd()
		return body, true
	case resp.GetErrorResponse() != nil:
		// 1.37+: a non-OK status with error_response takes the error path (reference 3.1).
		st.s.count(func(x *Stats) { x.CheckError++ })
		return body, st.authzError(az, resp.GetErrorResponse())
	default:
		dr := resp.GetDeniedResponse()
		status := int(dr.GetStatus().GetCode())
		if status == 0 {
			status = http.StatusForbidden // DeniedHttpResponse default
		}
		b := dr.GetBody()
		if n := az.MaxDeniedBodyBytes; n > 0 && len(b) > int(n) {
			b = b[:n]
		}
		st.flags.UnauthorizedDetails = &alsdata.ResponseFlags_Unauthorized{Reason: alsdata.ResponseFlags_Unauthorized_EXTERNAL_SERVICE}
		st.localReply(status, b, dr.GetHeaders(), "ext_authz_denied")
		return nil, false
	}
}

// authzError is the error path: failure_mode_allow lets the request through (optionally
// marked), otherwise a local reply with status_on_error (or error_response's status), flag
// UAEX, details ext_authz_error (reference 1.1, 3.1, 1.5).
func (st *stream) authzError(az *ExtAuthzConfig, er *authv3.DeniedHttpResponse) bool {
	if az.FailureModeAllow {
		if az.FailureModeAllowHeaderAdd {
			st.hdr.Set("x-envoy-auth-failure-mode-allowed", "true")
		}
		return true
	}
	status := az.StatusOnError
	if c := er.GetStatus().GetCode(); c != 0 {
		status = int(c)
	}
	st.flags.UnauthorizedDetails = &alsdata.ResponseFlags_Unauthorized{Reason: alsdata.ResponseFlags_Unauthorized_EXTERNAL_SERVICE}
	st.localReply(status, er.GetBody(), er.GetHeaders(), "ext_authz_error")
	return false
}

// checkRequest builds the CheckRequest as CheckRequestUtils::createHttpCheck does
// (reference 2): lower-case header keys including the pseudo-headers, duplicates joined with
// ",", values UTF-8-sanitized; request.http.id is the numeric stream id (not x-request-id);
// the body (raw_body with pack_as_bytes) truncated to max_request_bytes, with
// x-envoy-auth-partial-body; size = bytes received so far; context_extensions of the route;
// route_metadata_context and metadata_context for the configured namespaces.
func (st *stream) checkRequest(az *ExtAuthzConfig, settings interface{ GetPackAsBytes() bool }, body []byte, buffered, partial bool) *authv3.CheckRequest {
	headers := map[string]string{}
	for k, vs := range st.hdr {
		headers[strings.ToLower(k)] = sanitizeUTF8(strings.Join(vs, ","))
	}
	headers[":authority"] = st.authority
	headers[":method"] = st.method
	headers[":path"] = st.path
	headers[":scheme"] = st.scheme
	hr := &authv3.AttributeContext_HttpRequest{
		Id:       strconv.FormatUint(st.id, 10),
		Method:   st.method,
		Path:     st.path,
		Host:     st.authority,
		Scheme:   st.scheme,
		Protocol: "HTTP/1.1",
		Size:     st.reqBodyBytes,
		Headers:  headers,
	}
	if buffered {
		headers["x-envoy-auth-partial-body"] = strconv.FormatBool(partial)
		if settings.GetPackAsBytes() {
			hr.RawBody = append([]byte(nil), body...)
		} else {
			hr.Body = sanitizeUTF8(string(body))
		}
	}
	attrs := &authv3.AttributeContext{
		Source:            &authv3.AttributeContext_Peer{Address: socketAddress(st.r.RemoteAddr)},
		Destination:       &authv3.AttributeContext_Peer{Address: socketAddress(localAddr(st.r))},
		Request:           &authv3.AttributeContext_Request{Time: timestamppb.New(st.start), Http: hr},
		ContextExtensions: st.route.contextExtensions,
		MetadataContext:   &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}},
	}
	for _, ns := range az.MetadataContextNS {
		if m := st.md[ns]; m != nil {
			attrs.MetadataContext.FilterMetadata[ns] = m
		}
	}
	// route_metadata_context is set on every Check, empty when the route has none of the
	// namespaces (source/extensions/filters/common/ext_authz/check_request_utils.cc,
	// createHttpCheck moves it into the attributes unconditionally).
	rm := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}}
	for _, ns := range az.RouteMetadataContextNS {
		if m := routeMetadata(st.route.r, ns); m != nil {
			rm.FilterMetadata[ns] = m
		}
	}
	attrs.RouteMetadataContext = rm
	return &authv3.CheckRequest{Attributes: attrs}
}

// applyHeaderOption applies one HeaderValueOption: the deprecated append BoolValue when set,
// else append_action, whose zero value is APPEND_IF_EXISTS_OR_ADD (reference 3.2).
func applyHeaderOption(h http.Header, o *corev3.HeaderValueOption) {
	k := strings.ToLower(o.GetHeader().GetKey())
	v := o.GetHeader().GetValue()
	if v == "" && len(o.GetHeader().GetRawValue()) > 0 {
		v = string(o.GetHeader().GetRawValue())
	}
	action := o.GetAppendAction()
	//lint:ignore SA1019 Envoy still honours the deprecated field, so the simulator does
	if a := o.GetAppend(); a != nil {
		action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		if a.GetValue() {
			action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
		}
	}
	_, exists := h[http.CanonicalHeaderKey(k)]
	switch action {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
		h.Add(k, v)
	case corev3.HeaderValueOption_ADD_IF_ABSENT:
		if !exists {
			h.Add(k, v)
		}
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		h.Set(k, v)
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
		if exists {
			h.Set(k, v)
		}
	}
}

func applyHeaderOptions(h http.Header, opts []*corev3.HeaderValueOption) {
	for _, o := range opts {
		applyHeaderOption(h, o)
	}
}

// sanitizeUTF8 replaces invalid bytes with '!' (MessageUtil::sanitizeUtf8String).
func sanitizeUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 {
			b.WriteByte('!')
			i++
			continue
		}
		b.WriteString(s[i : i+n])
		i += n
	}
	return b.String()
}

func socketAddress(hostport string) *corev3.Address {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil
	}
	p, _ := strconv.ParseUint(port, 10, 32)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
	}}}
}

func localAddr(r *http.Request) string {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		return a.String()
	}
	return ""
}

// bufferBody reads the request body as the decoder buffers it for ext_authz: chunk by chunk
// until the end of the body or, with allow_partial_message, until at least limit bytes are
// buffered. Without it, it reads one byte past the limit, enough to know the body is too big
// (a 413). eof reports whether the body ended within what was read.
func bufferBody(r io.Reader, limit int64, partial bool) (buf []byte, eof bool, err error) {
	if !partial {
		buf, err = io.ReadAll(io.LimitReader(r, limit+1))
		return buf, int64(len(buf)) <= limit, err
	}
	chunk := make([]byte, 32<<10)
	for int64(len(buf)) < limit {
		n, rerr := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if rerr == io.EOF {
			return buf, true, nil
		}
		if rerr != nil {
			return buf, false, rerr
		}
	}
	return buf, false, nil
}

package envoysim

import (
	"net/http"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// entry builds the HTTPAccessLogEntry of a finished stream as the http_grpc logger does
// (reference 4.3): common properties from StreamInfo (times relative to start_time, a
// duration only for events that happened; upstream_cluster only when a host was chosen;
// metadata = all dynamic metadata), the request (request_id = x-request-id, headers named
// in additional_request_headers_to_log from the header map at log time, i.e. after ext_authz
// mutations) and the response (response_code absent when none was sent).
func (st *stream) entry(al *AccessLogConfig) *alsdata.HTTPAccessLogEntry {
	now := st.since()
	if st.upBody != nil {
		st.reqBodyBytes = max(st.reqBodyBytes, st.upBody.n.Load())
	}
	flags := proto.Clone(&st.flags).(*alsdata.ResponseFlags)
	c := &alsdata.AccessLogCommon{
		StartTime:                     timestamppb.New(st.start),
		Duration:                      durationpb.New(now),
		DownstreamRemoteAddress:       socketAddress(st.r.RemoteAddr),
		DownstreamDirectRemoteAddress: socketAddress(st.r.RemoteAddr),
		DownstreamLocalAddress:        socketAddress(localAddr(st.r)),
		ResponseFlags:                 flags,
		AccessLogType:                 alsdata.AccessLogType_DownstreamEnd,
		UpstreamRequestAttemptCount:   st.attempts,
		DownstreamWireBytesReceived:   uint64(st.reqHdrBytes + st.reqBodyBytes),
		DownstreamWireBytesSent:       uint64(st.respHdrBytes + st.respBodyBytes),
	}
	if st.route != nil {
		c.RouteName = st.route.name
	}
	// stream_id: the stream id provider's string, which the request id extension backs with
	// the x-request-id UUID (source/extensions/access_loggers/grpc/grpc_access_log_utils.cc,
	// getStreamIdProvider; source/extensions/request_id/uuid).
	c.StreamId = st.requestID
	setD := func(d time.Duration) *durationpb.Duration {
		if d <= 0 {
			return nil // the event never happened
		}
		return durationpb.New(d)
	}
	c.TimeToLastRxByte = setD(st.tLastRx)
	c.TimeToFirstUpstreamTxByte = setD(st.tFirstUpTx.get()) // only when bytes went upstream
	c.TimeToLastUpstreamTxByte = setD(st.tLastUpTx.get())
	c.TimeToFirstUpstreamRxByte = setD(st.tFirstUpRx.get())
	c.TimeToLastUpstreamRxByte = setD(st.tLastUpRx)
	c.TimeToFirstDownstreamTxByte = setD(st.tFirstDownTx)
	c.TimeToLastDownstreamTxByte = setD(st.tLastDownTx)
	// Upstream fields come from the host the load balancer chose, whether or not the
	// connection to it succeeded: a connection failure (UF) still names the cluster and the
	// address tried (grpc_access_log_utils.cc: upstreamInfo()->upstreamHost()).
	if a := st.upstreamAddr.Load(); a != nil {
		c.UpstreamCluster = st.upstreamCluster
		c.UpstreamRemoteAddress = socketAddress(*a)
	} else if st.upstreamHost != "" {
		c.UpstreamCluster = st.upstreamCluster
		c.UpstreamRemoteAddress = socketAddress(st.upstreamHost)
	}
	if len(st.md) > 0 { // copied only if an untyped namespace exists (reference 4.3)
		m := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}}
		for ns, s := range st.md {
			m.FilterMetadata[ns] = proto.Clone(s).(*structpb.Struct)
		}
		c.Metadata = m
	}
	req := &alsdata.HTTPRequestProperties{
		RequestMethod:       corev3.RequestMethod(corev3.RequestMethod_value[st.method]),
		Scheme:              st.scheme,
		Authority:           st.authority,
		Path:                st.path,
		UserAgent:           st.hdr.Get("user-agent"),
		Referer:             st.hdr.Get("referer"),
		ForwardedFor:        st.hdr.Get("x-forwarded-for"),
		RequestId:           st.requestID,
		RequestHeadersBytes: uint64(st.reqHdrBytes),
		RequestBodyBytes:    uint64(st.reqBodyBytes),
	}
	if len(al.RequestHeadersToLog) > 0 {
		req.RequestHeaders = pick(st.hdr, al.RequestHeadersToLog)
	}
	resp := &alsdata.HTTPResponseProperties{
		ResponseCodeDetails:  st.details,
		ResponseHeadersBytes: uint64(st.respHdrBytes),
		ResponseBodyBytes:    uint64(st.respBodyBytes),
	}
	if st.code != 0 {
		resp.ResponseCode = wrapperspb.UInt32(uint32(st.code))
	}
	if len(al.ResponseHeadersToLog) > 0 && st.respHeaders != nil {
		resp.ResponseHeaders = pick(st.respHeaders, al.ResponseHeadersToLog)
	}
	return &alsdata.HTTPAccessLogEntry{
		CommonProperties: c,
		ProtocolVersion:  alsdata.HTTPAccessLogEntry_HTTP11,
		Request:          req,
		Response:         resp,
	}
}

func pick(h http.Header, names []string) map[string]string {
	out := map[string]string{}
	for _, n := range names {
		if v := h.Values(n); len(v) > 0 {
			out[n] = strings.Join(v, ",")
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

package envoysim

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
	"google.golang.org/protobuf/types/known/structpb"
)

// This file runs envoy.filters.http.lua's response path in gopher-lua (a Lua 5.1 VM; Envoy
// runs LuaJIT, also Lua 5.1) with the part of Envoy's stream-handle API that purser's script
// uses, as source/extensions/filters/http/lua/wrappers.cc and lua_filter.cc define it:
// handle:headers():get(name) (the response headers), handle:bodyChunks() (an iterator over
// the body chunks as they arrive; each chunk has length() and getBytes(start, n)),
// handle:streamInfo():dynamicMetadata():set(namespace, key, value) (Lua tables become Structs
// or lists, MetadataMapHelper::loadValue), and handle:log*(). envoy_on_response runs as a
// coroutine that Envoy resumes with each chunk; the stand-in runs it once the body is over
// with the chunks in the order they arrived, which writes the same metadata. A reset stream
// never resumes the coroutine: its iterator stops with an error after the last chunk, so the
// script's code after the loop does not run (as in Envoy). A script error stops the script;
// what it wrote stays (Envoy logs the error and lets the response through).

// LuaFilter is the configured Lua filter (default_source_code, inline).
type LuaFilter struct {
	Name            string
	DisabledDefault bool
	Source          string
	proto           *lua.FunctionProto
}

func luaFilter(name string, disabled bool, l *luav3.Lua) (*LuaFilter, error) {
	//lint:ignore SA1019 a configuration may still use it: refused, not ignored
	if l.GetInlineCode() != "" || len(l.GetSourceCodes()) > 0 || l.GetDefaultSourceCode().GetFilename() != "" {
		return nil, fmt.Errorf("envoysim: lua %s: only default_source_code.inline_string is simulated", name)
	}
	src := l.GetDefaultSourceCode().GetInlineString()
	chunk, err := parse.Parse(strings.NewReader(src), name)
	if err != nil {
		return nil, fmt.Errorf("envoysim: lua %s: %w", name, err)
	}
	p, err := lua.Compile(chunk, name)
	if err != nil {
		return nil, fmt.Errorf("envoysim: lua %s: %w", name, err)
	}
	f := &LuaFilter{Name: name, DisabledDefault: disabled, Source: src, proto: p}
	// The request path is not simulated: refuse a script that has one rather than skip it.
	L := lua.NewState()
	defer L.Close()
	L.Push(L.NewFunctionFromProto(p))
	if err := L.PCall(0, lua.MultRet, nil); err != nil {
		return nil, fmt.Errorf("envoysim: lua %s: %w", name, err)
	}
	if L.GetGlobal("envoy_on_request") != lua.LNil {
		return nil, fmt.Errorf("envoysim: lua %s: envoy_on_request is not simulated", name)
	}
	return f, nil
}

var errLuaReset = errors.New("stream reset")

// respond runs envoy_on_response over a finished (or reset) response.
func (f *LuaFilter) respond(h http.Header, chunks [][]byte, reset bool, set metadataWriter) error {
	L := lua.NewState(lua.Options{SkipOpenLibs: false})
	defer L.Close()
	L.Push(L.NewFunctionFromProto(f.proto))
	if err := L.PCall(0, lua.MultRet, nil); err != nil {
		return err
	}
	fn := L.GetGlobal("envoy_on_response")
	if fn == lua.LNil {
		return nil
	}
	method := func(f lua.LGFunction) *lua.LFunction { return L.NewFunction(f) }
	object := func(methods map[string]lua.LGFunction) *lua.LTable {
		t := L.NewTable()
		for k, m := range methods {
			t.RawSetString(k, method(m))
		}
		return t
	}
	headers := object(map[string]lua.LGFunction{
		"get": func(L *lua.LState) int {
			v := h.Values(L.CheckString(2))
			if len(v) == 0 {
				L.Push(lua.LNil)
			} else {
				L.Push(lua.LString(strings.Join(v, ",")))
			}
			return 1
		},
	})
	dyn := object(map[string]lua.LGFunction{
		"set": func(L *lua.LState) int {
			ns, key := L.CheckString(2), L.CheckString(3)
			v, err := luaValue(L.Get(4))
			if err != nil {
				L.RaiseError("%s", err.Error())
			}
			set(ns, key, v, false)
			return 0
		},
	})
	streamInfo := object(map[string]lua.LGFunction{
		"dynamicMetadata": func(L *lua.LState) int { L.Push(dyn); return 1 },
	})
	noop := func(*lua.LState) int { return 0 }
	handle := object(map[string]lua.LGFunction{
		"headers":    func(L *lua.LState) int { L.Push(headers); return 1 },
		"streamInfo": func(L *lua.LState) int { L.Push(streamInfo); return 1 },
		"logTrace":   noop, "logDebug": noop, "logInfo": noop, "logWarn": noop, "logErr": noop, "logCritical": noop,
		"bodyChunks": func(L *lua.LState) int {
			i := 0
			L.Push(method(func(L *lua.LState) int {
				if i >= len(chunks) {
					if reset {
						L.RaiseError("%s", errLuaReset.Error())
					}
					L.Push(lua.LNil)
					return 1
				}
				data := chunks[i]
				i++
				L.Push(object(map[string]lua.LGFunction{
					"length": func(L *lua.LState) int { L.Push(lua.LNumber(len(data))); return 1 },
					"getBytes": func(L *lua.LState) int {
						start, n := L.CheckInt(2), L.CheckInt(3)
						if start < 0 || n < 0 || start+n > len(data) {
							L.RaiseError("index out of range")
						}
						L.Push(lua.LString(data[start : start+n]))
						return 1
					},
				}))
				return 1
			}))
			return 1
		},
	})
	err := L.CallByParam(lua.P{Fn: fn, NRet: 0, Protect: true}, handle)
	if err != nil && reset && strings.Contains(err.Error(), errLuaReset.Error()) {
		return nil // the coroutine is never resumed after a reset
	}
	return err
}

// luaValue converts a Lua value to a metadata value as Envoy's MetadataMapHelper::loadValue
// does: numbers, strings, booleans as such; a table with keys 1..n a list, one with string
// keys a Struct; nil and other keys are errors.
func luaValue(v lua.LValue) (*structpb.Value, error) {
	switch x := v.(type) {
	case lua.LBool:
		return structpb.NewBoolValue(bool(x)), nil
	case lua.LNumber:
		return structpb.NewNumberValue(float64(x)), nil
	case lua.LString:
		return structpb.NewStringValue(string(x)), nil
	case *lua.LTable:
		if n := x.MaxN(); n > 0 {
			l := &structpb.ListValue{}
			for i := 1; i <= n; i++ {
				e, err := luaValue(x.RawGetInt(i))
				if err != nil {
					return nil, err
				}
				l.Values = append(l.Values, e)
			}
			return structpb.NewListValue(l), nil
		}
		s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		var err error
		x.ForEach(func(k, val lua.LValue) {
			ks, ok := k.(lua.LString)
			if !ok {
				err = fmt.Errorf("metadata table keys must be strings, got %s", k.Type())
				return
			}
			e, verr := luaValue(val)
			if verr != nil {
				err = verr
				return
			}
			s.Fields[string(ks)] = e
		})
		if err != nil {
			return nil, err
		}
		return structpb.NewStructValue(s), nil
	}
	return nil, fmt.Errorf("unexpected value type %s", v.Type())
}

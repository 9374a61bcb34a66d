package fakellm

import (
	"encoding/json"
	"sync"

	"github.com/pkoukk/tiktoken-go"
	tiktokenloader "github.com/pkoukk/tiktoken-go-loader"
)

// Prompt tokens as OpenAI counts them. Without x-fake-input-tokens an OpenAI-flavoured
// request (chat, completions, responses, embeddings) reports the real o200k_base count of its
// prompt, so that tests can try purser's input bound against what a provider would bill:
// chat messages cost 3 tokens each plus their role, content and name (1 more for a name),
// and 3 prime the reply (openai-cookbook examples/How_to_count_tokens_with_tiktoken.ipynb,
// num_tokens_from_messages). The vocabulary is embedded (github.com/pkoukk/tiktoken-go-loader):
// no network.

var o200k = sync.OnceValues(func() (*tiktoken.Tiktoken, error) {
	tiktoken.SetBpeLoader(tiktokenloader.NewOfflineLoader())
	return tiktoken.GetEncoding("o200k_base")
})

// promptTokens is the input count to report when the request does not choose one: the
// o200k count of an OpenAI-flavoured prompt, else a quarter of the body's bytes (at least 1).
func (c *call) promptTokens() int64 {
	if n, ok := openAIPromptTokens(c.rec.API, c.body); ok {
		return n
	}
	return max(int64(len(c.body))/4, 1)
}

// openAIPromptTokens counts the prompt of an OpenAI-flavoured body; false for other APIs and
// for bodies it cannot read.
func openAIPromptTokens(api string, body []byte) (int64, bool) {
	enc, err := o200k()
	if err != nil {
		return 0, false
	}
	count := func(s string) int64 { return int64(len(enc.EncodeOrdinary(s))) }
	var b struct {
		Messages []struct {
			Role    string          `json:"role"`
			Name    string          `json:"name"`
			Content json.RawMessage `json:"content"`
		} `json:"messages"`
		Prompt       json.RawMessage `json:"prompt"`
		Input        json.RawMessage `json:"input"`
		Instructions string          `json:"instructions"`
	}
	if json.Unmarshal(body, &b) != nil {
		return 0, false
	}
	switch api {
	case "chat":
		n := int64(3)
		for _, m := range b.Messages {
			n += 3 + count(m.Role) + texts(m.Content, count)
			if m.Name != "" {
				n += 1 + count(m.Name)
			}
		}
		return n, true
	case "completions":
		return texts(b.Prompt, count), true
	case "responses":
		n := texts(b.Input, count)
		if b.Instructions != "" {
			n += 3 + count(b.Instructions)
		}
		return n + 3, true
	case "embeddings":
		return texts(b.Input, count), true
	}
	return 0, false
}

// texts counts the text of a content value: a string, an array of strings or token ids, or
// content parts / items with "text" (and "content") members.
func texts(raw json.RawMessage, count func(string) int64) int64 {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return count(s)
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) == nil {
		var n int64
		for _, e := range list {
			var id int64
			if json.Unmarshal(e, &id) == nil {
				n++ // a token id
				continue
			}
			n += texts(e, count)
		}
		return n
	}
	var part struct {
		Role    string          `json:"role"`
		Text    *string         `json:"text"`
		Content json.RawMessage `json:"content"`
	}
	if json.Unmarshal(raw, &part) == nil {
		var n int64
		if part.Text != nil {
			n += count(*part.Text)
		}
		if len(part.Content) > 0 {
			n += 3 + count(part.Role) + texts(part.Content, count)
		}
		return n
	}
	return 0
}

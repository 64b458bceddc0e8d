// Renders Ollama TEMPLATE text with Go's text/template the way Ollama does (template/template.go and
// server/routes.go): SYSTEM inserted as a first system message when the chat has none, consecutive
// messages of one role merged with "\n\n", .System = all system messages joined by "\n\n", option
// missingkey=zero and Ollama's one template function, json.
//
// stdin: {"template": str, "system": str, "cases": [[{"role": str, "content": str}, ...], ...]}
// stdout: [{"out": str} | {"error": str}, ...]
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type request struct {
	Template string      `json:"template"`
	System   string      `json:"system"`
	Cases    [][]Message `json:"cases"`
}

type result struct {
	Out   string `json:"out"`
	Error string `json:"error,omitempty"`
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		panic(err)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
	results := []result{}
	for _, c := range req.Cases {
		if err != nil {
			results = append(results, result{Error: "parse: " + err.Error()})
			continue
		}
		msgs := append([]Message{}, c...)
		if req.System != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
			msgs = append([]Message{{Role: "system", Content: req.System}}, msgs...)
		}
		system, collated := collate(msgs)
		var b strings.Builder
		e := tmpl.Execute(&b, map[string]any{"System": system, "Messages": collated, "Tools": nil,
			"Response": "", "Think": false, "IsThinkSet": false})
		if e != nil {
			results = append(results, result{Error: e.Error()})
		} else {
			results = append(results, result{Out: b.String()})
		}
	}
	json.NewEncoder(os.Stdout).Encode(results)
}

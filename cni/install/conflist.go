package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
)

// member is one key of a JSON object with its value kept as the bytes it was
// written with, so that a rewrite preserves key order, number literals and
// string escapes of everything weir does not own.
type member struct {
	key   string
	value json.RawMessage
}

// object is a JSON object in document order.
type object []member

// parseObject decodes a JSON object without reordering or re-encoding its values.
func parseObject(data []byte) (object, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("read JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("read JSON: top level is not an object")
	}
	var obj object
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("read JSON: %w", err)
		}
		key, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("read JSON: object key %v is not a string", tok)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("read JSON value of %q: %w", key, err)
		}
		obj = append(obj, member{key: key, value: raw})
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("read JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("read JSON: trailing data after the top-level object")
	}
	return obj, nil
}

// get returns the value of key. Like encoding/json, the last of duplicate keys wins.
func (o object) get(key string) (json.RawMessage, bool) {
	for i := len(o) - 1; i >= 0; i-- {
		if o[i].key == key {
			return o[i].value, true
		}
	}
	return nil, false
}

// set replaces the value of key (every duplicate of it), or appends key.
func (o object) set(key string, value json.RawMessage) object {
	found := false
	for i := range o {
		if o[i].key == key {
			o[i].value = value
			found = true
		}
	}
	if !found {
		o = append(o, member{key: key, value: value})
	}
	return o
}

// marshal writes the object with two-space indentation. Values are copied token
// for token; only whitespace between tokens changes.
func (o object) marshal() ([]byte, error) {
	var compact bytes.Buffer
	compact.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			compact.WriteByte(',')
		}
		k, err := json.Marshal(m.key)
		if err != nil {
			return nil, err
		}
		compact.Write(k)
		compact.WriteByte(':')
		if err := json.Compact(&compact, m.value); err != nil {
			return nil, fmt.Errorf("write JSON value of %q: %w", m.key, err)
		}
	}
	compact.WriteByte('}')
	var out bytes.Buffer
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// pluginType reads the "type" of one plugin entry; "" when it has none.
func pluginType(entry json.RawMessage) string {
	var t struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(entry, &t); err != nil {
		return ""
	}
	return t.Type
}

// sameJSON reports whether two JSON documents hold the same values, whatever
// their key order or spacing.
func sameJSON(a, b []byte) bool {
	var va, vb any
	da := json.NewDecoder(bytes.NewReader(a))
	da.UseNumber()
	db := json.NewDecoder(bytes.NewReader(b))
	db.UseNumber()
	if da.Decode(&va) != nil || db.Decode(&vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// chainMode says how strictly chain treats a weir entry that is already there.
type chainMode int

const (
	// replaceEntry makes the entry equal to the desired one: what an installer
	// starting up does, so a new release's settings take effect.
	replaceEntry chainMode = iota
	// keepEntry only re-inserts a missing entry and moves it last, leaving its
	// settings alone: what the watcher does, so that an old and a new installer
	// running side by side during a rolling update never undo each other.
	keepEntry
)

// chain returns list with exactly one plugin of type typ, placed last. When the
// list already satisfies that (and, under replaceEntry, the entry equals entry),
// it returns list itself and changed=false, so repeated runs write nothing.
func chain(list []byte, entry json.RawMessage, typ string, mode chainMode) (out []byte, changed bool, err error) {
	obj, plugins, err := splitList(list)
	if err != nil {
		return nil, false, err
	}
	var others []json.RawMessage
	var ours []json.RawMessage
	for _, p := range plugins {
		if pluginType(p) == typ {
			ours = append(ours, p)
		} else {
			others = append(others, p)
		}
	}
	if len(ours) == 1 && pluginType(plugins[len(plugins)-1]) == typ &&
		(mode == keepEntry || sameJSON(ours[0], entry)) {
		return list, false, nil
	}
	if len(others) == 0 {
		return nil, false, fmt.Errorf("conflist has no plugin other than %s to chain after", typ)
	}
	keep := entry
	if mode == keepEntry && len(ours) > 0 {
		// Prefer an entry equal to ours, else the last one the file held.
		keep = ours[len(ours)-1]
		if i := slices.IndexFunc(ours, func(p json.RawMessage) bool { return sameJSON(p, entry) }); i >= 0 {
			keep = ours[i]
		}
	}
	out, err = joinList(obj, append(others, keep))
	return out, err == nil, err
}

// unchain returns list without any plugin of type typ.
func unchain(list []byte, typ string) (out []byte, changed bool, err error) {
	obj, plugins, err := splitList(list)
	if err != nil {
		return nil, false, err
	}
	others := slices.DeleteFunc(slices.Clone(plugins), func(p json.RawMessage) bool { return pluginType(p) == typ })
	if len(others) == len(plugins) {
		return list, false, nil
	}
	if len(others) == 0 {
		return nil, false, fmt.Errorf("conflist holds only %s plugins; removing them would leave it empty", typ)
	}
	out, err = joinList(obj, others)
	return out, err == nil, err
}

// splitList parses a conflist into its top-level object and its plugin entries.
func splitList(list []byte) (object, []json.RawMessage, error) {
	obj, err := parseObject(list)
	if err != nil {
		return nil, nil, err
	}
	raw, ok := obj.get("plugins")
	if !ok {
		return nil, nil, errors.New(`conflist has no "plugins" array`)
	}
	var plugins []json.RawMessage
	if err := json.Unmarshal(raw, &plugins); err != nil {
		return nil, nil, fmt.Errorf(`conflist "plugins" is not an array of objects: %w`, err)
	}
	if len(plugins) == 0 {
		return nil, nil, errors.New(`conflist "plugins" is empty`)
	}
	return obj, plugins, nil
}

// joinList writes plugins back into obj. Plugin entries keep their bytes.
func joinList(obj object, plugins []json.RawMessage) ([]byte, error) {
	var arr bytes.Buffer
	arr.WriteByte('[')
	for i, p := range plugins {
		if i > 0 {
			arr.WriteByte(',')
		}
		arr.Write(p)
	}
	arr.WriteByte(']')
	return obj.set("plugins", arr.Bytes()).marshal()
}

// confToList wraps a single-plugin .conf file into a conflist with that plugin
// as its only entry, taking name and cniVersion from it as libcni does when it
// upconverts. The plugin entry keeps its bytes, name and cniVersion included.
func confToList(conf []byte) ([]byte, error) {
	obj, err := parseObject(conf)
	if err != nil {
		return nil, err
	}
	list := object{}
	for _, k := range []string{"cniVersion", "name"} {
		if v, ok := obj.get(k); ok {
			list = append(list, member{key: k, value: v})
		}
	}
	return joinList(list, []json.RawMessage{json.RawMessage(conf)})
}

// pluginEntry builds weir's conflist entry. Entries inside a list carry no name
// or cniVersion: the runtime injects the list's.
func pluginEntry(o Options) (json.RawMessage, error) {
	type entry struct {
		Type        string `json:"type"`
		AgentSocket string `json:"agentSocket"`
		Mode        string `json:"mode"`
		LogFile     string `json:"logFile,omitempty"`
	}
	b, err := json.Marshal(entry{Type: o.PluginType, AgentSocket: o.AgentSocket, Mode: o.Mode, LogFile: o.LogFile})
	return json.RawMessage(b), err
}

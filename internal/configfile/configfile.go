// Package configfile decodes a TOML configuration file into a Go struct key
// by key, so that every problem is reported at once, each with its dotted
// key and line: a key the struct has no field for, a value of the wrong
// type, and a value its field's type refuses (a field whose type implements
// encoding.TextUnmarshaler checks its own value, so an enumeration, an
// address or a template is parsed once, where it is decoded).
//
// A field is named by its `toml:"name"` tag. A struct field (that is not a
// TextUnmarshaler) is a table and a slice of such structs an array of
// tables; both are decoded key by key as well. A key that fails keeps the
// field's value from before (its default).
package configfile

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// KeyError is one problem with one key.
type KeyError struct {
	Key  string // dotted: "upstream.security", "accounts[2].name"
	Line int    // 1-based; 0 when unknown
	Env  string // the environment variable it came from (ApplyEnv), or ""
	Msg  string
}

func (e *KeyError) Error() string {
	if e.Env != "" {
		return fmt.Sprintf("%s (environment variable %s): %s", e.Key, e.Env, e.Msg)
	}
	if e.Line > 0 {
		return fmt.Sprintf("%s (line %d): %s", e.Key, e.Line, e.Msg)
	}
	return e.Key + ": " + e.Msg
}

// Decode decodes text into dst, a pointer to a struct holding the
// defaults. It returns nil, or every problem found joined with
// errors.Join (each a *KeyError, or one error for a syntax error, after
// which nothing is decoded).
func Decode(text string, dst any) error {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return errors.New("configfile: Decode needs a pointer to a struct")
	}
	var top map[string]toml.Primitive
	md, err := toml.Decode(text, &top)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			ke := &KeyError{Key: pe.LastKey, Line: pe.Position.Line, Msg: pe.Message}
			if ke.Key == "" {
				return fmt.Errorf("line %d: %s", ke.Line, ke.Msg)
			}
			return ke
		}
		return err
	}
	d := &decoder{md: &md, lines: keyLines(text)}
	d.table(top, v.Elem(), "")
	sort.SliceStable(d.errs, func(i, j int) bool { return d.errs[i].Line < d.errs[j].Line })
	errs := make([]error, len(d.errs))
	for i, e := range d.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

type decoder struct {
	md    *toml.MetaData
	lines map[string]int // dotted key → line it is set on
	errs  []*KeyError
}

func (d *decoder) fail(key string, err error) {
	msg := err.Error()
	var pe toml.ParseError
	if errors.As(err, &pe) {
		msg = pe.Message
	} else if m := tomlPrefix.FindStringSubmatch(msg); m != nil {
		msg = msg[len(m[0]):]
	}
	d.errs = append(d.errs, &KeyError{Key: key, Line: d.line(key), Msg: msg})
}

// tomlPrefix is what BurntSushi/toml puts before a type mismatch.
var tomlPrefix = regexp.MustCompile(`^toml: (?:line \d+ )?(?:\(last key "[^"]*"\): )?`)

// line returns the line key (or, for a key of an array of tables, the
// nearest one known) is set on.
func (d *decoder) line(key string) int {
	for k := key; k != ""; {
		if n, ok := d.lines[k]; ok {
			return n
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// isTable reports whether a field of type t is decoded key by key.
func isTable(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(textUnmarshaler)
}

// table decodes the keys of one table into the struct v.
func (d *decoder) table(tbl map[string]toml.Primitive, v reflect.Value, prefix string) {
	fields := map[string]reflect.Value{}
	t := v.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
		if name == "" || name == "-" || !t.Field(i).IsExported() {
			continue
		}
		fields[name] = v.Field(i)
	}
	keys := make([]string, 0, len(tbl))
	for k := range tbl {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		prim := tbl[key]
		path := prefix + key
		f, ok := fields[key]
		if !ok {
			d.errs = append(d.errs, &KeyError{Key: path, Line: d.line(path), Msg: "unknown key"})
			continue
		}
		switch {
		case isTable(f.Type()):
			var sub map[string]toml.Primitive
			if err := d.md.PrimitiveDecode(prim, &sub); err != nil {
				d.fail(path, fmt.Errorf("must be a table ([%s])", path))
				continue
			}
			d.table(sub, f, path+".")
		case f.Kind() == reflect.Slice && isTable(f.Type().Elem()):
			var subs []map[string]toml.Primitive
			if err := d.md.PrimitiveDecode(prim, &subs); err != nil {
				d.fail(path, fmt.Errorf("must be an array of tables ([[%s]])", path))
				continue
			}
			out := reflect.MakeSlice(f.Type(), len(subs), len(subs))
			for i, sub := range subs {
				d.table(sub, out.Index(i), path+"["+strconv.Itoa(i)+"].")
			}
			f.Set(out)
		default:
			nv := reflect.New(f.Type())
			if err := d.md.PrimitiveDecode(prim, nv.Interface()); err != nil {
				d.fail(path, err)
				continue
			}
			f.Set(nv.Elem())
		}
	}
}

// keyLines maps each dotted key of a TOML text to the line that sets it:
// "key = value" lines under [table] and [[array]] headers, the arrays
// numbered as they come. It serves error messages only, so it need not
// understand every corner of TOML (a value spanning lines is given the
// line it starts on).
func keyLines(text string) map[string]int {
	lines := map[string]int{}
	prefix := ""
	arrays := map[string]int{}
	for i, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "[["):
			name := strings.TrimSpace(strings.Trim(strings.SplitN(l, "#", 2)[0], "[] \t"))
			n := arrays[name]
			arrays[name] = n + 1
			prefix = name + "[" + strconv.Itoa(n) + "]."
			lines[strings.TrimSuffix(prefix, ".")] = i + 1
		case strings.HasPrefix(l, "["):
			name := strings.TrimSpace(strings.Trim(strings.SplitN(l, "#", 2)[0], "[] \t"))
			prefix = name + "."
			lines[name] = i + 1
		case l == "" || strings.HasPrefix(l, "#"):
		default:
			if key, _, ok := strings.Cut(l, "="); ok {
				lines[prefix+strings.Trim(strings.TrimSpace(key), `"'`)] = i + 1
			}
		}
	}
	return lines
}

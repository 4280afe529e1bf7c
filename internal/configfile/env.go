package configfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// ApplyEnv overrides the fields of dst (a pointer to the struct Decode
// filled) with environment variables (environ: "NAME=value" pairs, as
// os.Environ returns them). Each key a table holds, at any depth but not
// inside an array of tables, has one variable: prefix, then the dotted
// key with "." replaced by "_", in upper case ("upstream.address" with
// prefix "POPBRIDGE_" is POPBRIDGE_UPSTREAM_ADDRESS).
//
// A value is read as a TOML value of the field's type, except that it
// needs no quotes: a string, or a type that decodes itself from text or a
// duration, is taken as it is ("imap.example.com:993", "30s"); a number or
// a boolean is written as in TOML. An array is a TOML array ("[1, 2]",
// `["a", "b"]`) when the value starts with "[", and otherwise a list
// separated by commas, each element taken as a scalar value is (spaces
// around an element are dropped; an empty value is an empty array).
//
// It returns nil or every problem joined with errors.Join, each a
// *KeyError with the dotted key and the variable (Env). A variable that
// starts with prefix and the name of a top-level table, but names no key
// of it, is an error (a misspelt key), as is one that names an array of
// tables; every other variable is left alone. A key that fails keeps its
// value.
func ApplyEnv(environ []string, prefix string, dst any) error {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return errors.New("configfile: ApplyEnv needs a pointer to a struct")
	}
	keys := map[string]envKey{}
	var tables []string
	envKeys(v.Elem(), "", prefix, keys, &tables)
	var errs []*KeyError
	sort.Strings(environ)
	for _, kv := range environ {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, prefix) {
			continue
		}
		k, ok := keys[name]
		if !ok {
			rest := strings.TrimPrefix(name, prefix)
			for _, t := range tables {
				bare := strings.Trim(t, "[]")
				if !strings.HasPrefix(rest, strings.ToUpper(bare)+"_") {
					continue
				}
				msg := "unknown key"
				if bare != t {
					msg = "the array of tables " + t + " cannot be set from the environment"
				}
				errs = append(errs, &KeyError{Key: bare + "." + strings.ToLower(rest[len(bare)+1:]), Env: name, Msg: msg})
				break
			}
			continue
		}
		if err := setFromText(k.field, val); err != nil {
			errs = append(errs, &KeyError{Key: k.key, Env: name, Msg: cleanMsg(err)})
		}
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
}

// EnvName returns the variable ApplyEnv reads for a dotted key.
func EnvName(prefix, key string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

type envKey struct {
	key   string
	field reflect.Value
}

// envKeys collects the keys of the tables of v (prefix: the dotted key of
// v's table, "" at the top) by variable name, and the names of the
// top-level tables.
func envKeys(v reflect.Value, prefix, envPrefix string, out map[string]envKey, tables *[]string) {
	t := v.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
		if name == "" || name == "-" || !t.Field(i).IsExported() {
			continue
		}
		f := v.Field(i)
		switch {
		case isTable(f.Type()):
			if prefix == "" {
				*tables = append(*tables, name)
			}
			envKeys(f, prefix+name+".", envPrefix, out, tables)
		case f.Kind() == reflect.Slice && isTable(f.Type().Elem()):
			// An array of tables has no variables; a variable that
			// names one is an error.
			if prefix == "" {
				*tables = append(*tables, "[["+name+"]]")
			}
		default:
			out[EnvName(envPrefix, prefix+name)] = envKey{key: prefix + name, field: f}
		}
	}
}

// stringLike reports whether values of t are written without quotes in a
// variable: strings, durations and types that decode themselves from text.
func stringLike(t reflect.Type) bool {
	return t.Kind() == reflect.String || t == reflect.TypeFor[time.Duration]() || reflect.PointerTo(t).Implements(textUnmarshaler)
}

// quote writes s as a TOML basic string (JSON's escapes are TOML's).
func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// setFromText decodes the variable's value val into f.
func setFromText(f reflect.Value, val string) error {
	t := f.Type()
	var lit string
	switch {
	case t.Kind() == reflect.Slice && !stringLike(t) && strings.HasPrefix(strings.TrimSpace(val), "["):
		lit = val
	case t.Kind() == reflect.Slice && !stringLike(t):
		var elems []string
		if strings.TrimSpace(val) != "" {
			for _, e := range strings.Split(val, ",") {
				e = strings.TrimSpace(e)
				if stringLike(t.Elem()) || t.Elem().Kind() == reflect.Interface {
					e = quote(e)
				}
				elems = append(elems, e)
			}
		}
		lit = "[" + strings.Join(elems, ", ") + "]"
	case stringLike(t):
		lit = quote(val)
	default:
		lit = val
	}
	var top map[string]toml.Primitive
	md, err := toml.Decode("v = "+lit, &top)
	if err != nil {
		return fmt.Errorf("%q is not a value of this key: %w", val, err)
	}
	nv := reflect.New(t)
	if err := md.PrimitiveDecode(top["v"], nv.Interface()); err != nil {
		return err
	}
	f.Set(nv.Elem())
	return nil
}

// cleanMsg is the message of a decoding error without BurntSushi/toml's
// prefixes.
func cleanMsg(err error) string {
	msg := err.Error()
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return pe.Message
	}
	if m := tomlPrefix.FindStringSubmatch(msg); m != nil {
		msg = msg[len(m[0]):]
	}
	return msg
}

// ResolveFiles reads the secrets kept in files. A string field whose tag
// has the option "file" (`toml:"dsn_file,file"`) names a file that holds
// the value of the string field of the same table whose key is its own
// without "_file" (dsn): ResolveFiles sets that field to the file's
// contents, without one final line end, so that the secret stays out of
// the configuration file, the environment and the process list. Setting
// both keys is an error, as is a file that cannot be read. It returns nil
// or every problem joined with errors.Join, each a *KeyError.
func ResolveFiles(dst any) error {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return errors.New("configfile: ResolveFiles needs a pointer to a struct")
	}
	var errs []error
	resolveFiles(v.Elem(), "", &errs)
	return errors.Join(errs...)
}

func resolveFiles(v reflect.Value, prefix string, errs *[]error) {
	t := v.Type()
	byName := map[string]reflect.Value{}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
		if name != "" && t.Field(i).IsExported() {
			byName[name] = v.Field(i)
		}
	}
	for i := range t.NumField() {
		sf := t.Field(i)
		name, opts, _ := strings.Cut(sf.Tag.Get("toml"), ",")
		if name == "" || name == "-" || !sf.IsExported() {
			continue
		}
		f := v.Field(i)
		switch {
		case isTable(f.Type()):
			resolveFiles(f, prefix+name+".", errs)
			continue
		case f.Kind() == reflect.Slice && isTable(f.Type().Elem()):
			for j := range f.Len() {
				resolveFiles(f.Index(j), fmt.Sprintf("%s%s[%d].", prefix, name, j), errs)
			}
			continue
		}
		if !hasOpt(opts, "file") || f.Kind() != reflect.String || f.String() == "" {
			continue
		}
		base := strings.TrimSuffix(name, "_file")
		target, ok := byName[base]
		if !ok || base == name || target.Kind() != reflect.String {
			*errs = append(*errs, &KeyError{Key: prefix + name, Msg: "configfile: no string key " + base + " for it"})
			continue
		}
		if target.String() != "" {
			*errs = append(*errs, &KeyError{Key: prefix + name, Msg: "set together with " + prefix + base + ": set only one of them"})
			continue
		}
		data, err := os.ReadFile(f.String())
		if err != nil {
			*errs = append(*errs, &KeyError{Key: prefix + name, Msg: err.Error()})
			continue
		}
		s := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
		if s == "" {
			*errs = append(*errs, &KeyError{Key: prefix + name, Msg: f.String() + " is empty"})
			continue
		}
		target.SetString(s)
	}
}

func hasOpt(opts, want string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

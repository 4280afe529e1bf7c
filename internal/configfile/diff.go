package configfile

import (
	"reflect"
	"strings"
)

// Diff returns the dotted keys (as Decode names them) whose values differ
// between a and b, two values of one struct type, in field order. A table
// is compared key by key; an array of tables, a slice or any other value as
// a whole (reflect.DeepEqual).
func Diff(a, b any) []string {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	if va.Type() != vb.Type() {
		panic("configfile: Diff of values of different types")
	}
	for va.Kind() == reflect.Pointer {
		va, vb = va.Elem(), vb.Elem()
	}
	var out []string
	diff(va, vb, "", &out)
	return out
}

func diff(a, b reflect.Value, prefix string, out *[]string) {
	t := a.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
		if name == "" || name == "-" || !t.Field(i).IsExported() {
			continue
		}
		fa, fb := a.Field(i), b.Field(i)
		if isTable(fa.Type()) {
			diff(fa, fb, prefix+name+".", out)
			continue
		}
		if !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
			*out = append(*out, prefix+name)
		}
	}
}

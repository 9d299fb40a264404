package registry_test

import (
	"context"
	"slices"
	"testing"

	"github.com/buffdb/buffdbd/registry"
	"github.com/buffdb/buffdbd/store"
)

func TestService_ListModels(t *testing.T) {
	ctx := context.Background()
	s := openService(t, registry.Options{})
	for _, m := range []registry.ModelInfo{
		{Name: "org/a", Version: "v1", Framework: "onnx", Parameters: map[string]string{"task": "nlp"}},
		{Name: "org/a", Version: "v2", Framework: "pytorch", Parameters: map[string]string{"task": "nlp"}},
		{Name: "org/b", Version: "v1", Framework: "onnx", Parameters: map[string]string{"task": "vision"}},
		{Name: "other", Version: "v1", Framework: "onnx"},
	} {
		if err := s.Import(ctx, registry.ImportRequest{Info: m, Files: []registry.ImportFile{file("f", []byte(m.Name+m.Version))}}); err != nil {
			t.Fatal(err)
		}
	}
	list := func(f registry.ListFilter) []string {
		t.Helper()
		ms, err := s.ListModels(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range ms {
			for _, v := range m.Versions {
				out = append(out, m.Name+":"+v.Version)
			}
		}
		return out
	}
	check := func(name string, f registry.ListFilter, want ...string) {
		t.Helper()
		if got := list(f); !slices.Equal(got, want) {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
	}
	check("All", registry.ListFilter{}, "org/a:v1", "org/a:v2", "org/b:v1", "other:v1")
	check("Prefix", registry.ListFilter{Prefix: "org/"}, "org/a:v1", "org/a:v2", "org/b:v1")
	check("Framework", registry.ListFilter{Framework: "onnx"}, "org/a:v1", "org/b:v1", "other:v1")
	check("FrameworkAndParam", registry.ListFilter{Framework: "onnx", Parameters: map[string]string{"task": "nlp"}}, "org/a:v1")
	check("NoMatch", registry.ListFilter{Framework: "tensorflow"})

	// The framework filter is served by a store index BuffDB clients can query as well.
	var keys []string
	if err := s.DB().Find(ctx, "", registry.FrameworkIndex, "pytorch", 0, nil, func(h store.Hit) error { keys = append(keys, h.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keys, []string{"model:org/a:v2:metadata"}) {
		t.Fatalf("index lookup = %v", keys)
	}
	// Without the index (a user dropped it) the filter still works.
	if err := s.DB().DropIndex(ctx, registry.FrameworkIndex); err != nil {
		t.Fatal(err)
	}
	check("FrameworkWithoutIndex", registry.ListFilter{Framework: "onnx"}, "org/a:v1", "org/b:v1", "other:v1")
}

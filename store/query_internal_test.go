package store

import "testing"

func TestCountStatements(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want int
	}{
		{"", 0},
		{" ;; ", 0},
		{"SELECT 1", 1},
		{"SELECT 1;", 1},
		{"SELECT 1; -- trailing comment", 1},
		{"SELECT 1; /* trailing; comment */ ", 1},
		{"SELECT ';' AS a", 1},
		{"SELECT 'it''s; fine'", 1},
		{`SELECT "a;b" FROM [c;d] WHERE ` + "`e;f`" + ` = 1`, 1},
		{"SELECT 1 -- ; not a separator\n", 1},
		{"SELECT 1; SELECT 2", 2},
		{"select 1 as a; select 2 as b;", 2},
		{"INSERT INTO kv VALUES ('a', ';'); INSERT INTO kv VALUES ('b', 'x')", 2},
		{"SELECT 1; /* unterminated", 1},
		{"SELECT 'unterminated; SELECT 2", 1},
	} {
		if got := countStatements(tc.sql); got != tc.want {
			t.Errorf("countStatements(%q) = %d, want %d", tc.sql, got, tc.want)
		}
	}
	if _, err := oneStatement("CREATE TRIGGER t AFTER INSERT ON kv BEGIN SELECT 1; SELECT 2; END"); err != nil {
		t.Errorf("a trigger body's statements: %v", err)
	}
}

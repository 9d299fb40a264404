package main

import (
	"github.com/spf13/cobra"
)

func newQueryCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{Use: "query <SQL>", Short: "Run SQL against the store", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return usagef("not implemented yet") }}
}

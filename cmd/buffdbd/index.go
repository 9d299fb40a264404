package main

import (
	"github.com/spf13/cobra"
)

func newIndexCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{Use: "index", Short: "Manage secondary indexes"}
}

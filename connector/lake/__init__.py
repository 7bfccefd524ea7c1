"""The output's one home: its layout, locks, publishing and recovery, and every deletion."""

"""Live run events: Server-Sent Event streams of the status and epoch rows runs commit."""

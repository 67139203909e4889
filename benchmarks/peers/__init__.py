"""The servers cnnserve is measured against, written the way their documentation teaches."""

"""clipsearch's command line: the top layer, above search_api, ui and indexer (DESIGN.md).

Commands live in cli.py and in the command modules it registers; common.py holds what they share.
"""
